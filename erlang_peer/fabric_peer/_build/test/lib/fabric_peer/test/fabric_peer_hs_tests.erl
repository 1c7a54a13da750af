%% EUnit tests of the pure handshake steps: fabric_peer_client_hs and fabric_peer_server_hs
%% driven against each other, frame by frame, with no socket.
-module(fabric_peer_hs_tests).

-include_lib("eunit/include/eunit.hrl").

server(Secret, Extra) ->
    {ok, O} = fabric_peer_opts:normalize(server, Secret, Extra),
    O.

client(Secret, Extra) ->
    {ok, O} = fabric_peer_opts:normalize(client, Secret, Extra),
    O.

rand() -> #{nonce => crypto:strong_rand_bytes(32), challenge => fabric_peer_handshake:legacy_challenge()}.

%% Client hello .. server challenge .. client response: the server's verdict.
to_response(CO, SO, Session) ->
    {F1, CHs} = fabric_peer_client_hs:hello(CO, crypto:strong_rand_bytes(32)),
    {send, F2, SHs} = fabric_peer_server_hs:hello(F1, SO, rand()),
    {send, F3, CHs1} = fabric_peer_client_hs:challenge(F2, CHs, Session, CO, <<"server">>),
    {F3, CHs1, SHs, fabric_peer_server_hs:response(F3, SHs, SO, <<"client">>)}.

extended_handshake_agrees_on_everything_test() ->
    SO = server("s", #{heartbeat => 5000}),
    CO = client("s", #{features => [<<"whereis">>, <<"link">>, <<"session">>]}),
    {F3, CHs, SHs, {extended, SParams, undefined}} = to_response(CO, SO, undefined),
    Sid = crypto:strong_rand_bytes(16),
    F4 = fabric_peer_server_hs:success(Sid, false, F3, SHs, SO),
    {established, CParams, false} = fabric_peer_client_hs:auth(F4, CHs, CO, <<"server">>),
    Feats = lists:sort([<<"whereis">>, <<"link">>, <<"session">>]),
    ?assertMatch(#{mode := extended, peer_hb := 15000}, SParams),
    ?assertMatch(#{mode := extended, peer_hb := 5000, session := Sid}, CParams),
    ?assertEqual({Feats, Feats}, {lists:sort(maps:get(features, SParams)),
                                  lists:sort(maps:get(features, CParams))}).

a_wrong_secret_is_refused_by_the_server_test() ->
    {_, _, _, Verdict} = to_response(client("wrong", #{}), server("s", #{}), undefined),
    ?assertEqual(failed, Verdict),
    ?assertEqual({auth, failed}, binary_to_term(fabric_peer_server_hs:failure())).

a_server_that_cannot_prove_the_secret_is_refused_by_the_client_test() ->
    SO = server("s", #{}),
    CO = client("s", #{}),
    {F3, CHs, SHs, {extended, _, _}} = to_response(CO, SO, undefined),
    Forged = fabric_peer_server_hs:success(undefined, false, F3, SHs, server("other", #{})),
    ?assertEqual({fail, {auth_failed, server_not_authenticated}},
                 fabric_peer_client_hs:auth(Forged, CHs, CO, <<"server">>)).

a_resuming_client_names_its_session_test() ->
    Sid = crypto:strong_rand_bytes(16),
    {F3, CHs, SHs, {extended, _, Resume}} = to_response(client("s", #{}), server("s", #{}), Sid),
    ?assertEqual(Sid, Resume),
    F4 = fabric_peer_server_hs:success(Sid, true, F3, SHs, server("s", #{})),
    ?assertMatch({established, #{session := Sid}, true},
                 fabric_peer_client_hs:auth(F4, CHs, client("s", #{}), <<"server">>)).

legacy_handshake_test() ->
    SO = server("s", #{allow_legacy_auth => true}),
    CO = client("s", #{mode => legacy, allow_legacy_auth => true}),
    {_, CHs, _, {legacy, F4}} = to_response(CO, SO, undefined),
    ?assertEqual({established, #{mode => legacy}, false},
                 fabric_peer_client_hs:auth(F4, CHs, CO, <<"server">>)).

legacy_is_refused_unless_allowed_test() ->
    CO = client("s", #{mode => legacy, allow_legacy_auth => true}),
    {_, _, _, Verdict} = to_response(CO, server("s", #{}), undefined),
    ?assertEqual(failed, Verdict),
    %% and a client that does not allow it refuses an original (legacy-only) server
    SO = server("s", #{mode => legacy, allow_legacy_auth => true}),
    {F1, CHs} = fabric_peer_client_hs:hello(client("s", #{}), crypto:strong_rand_bytes(32)),
    {send, F2, _} = fabric_peer_server_hs:hello(F1, SO, rand()),
    ?assertMatch({challenge, C} when is_list(C), binary_to_term(F2)),
    ?assertEqual({fail, {auth_failed, legacy_server}},
                 fabric_peer_client_hs:challenge(F2, CHs, undefined, client("s", #{}), <<"server">>)).

garbage_is_refused_at_every_step_test() ->
    SO = server("s", #{}),
    CO = client("s", #{}),
    ?assertEqual({refuse, "first frame is not a valid term"},
                 fabric_peer_server_hs:hello(<<"garbage">>, SO, rand())),
    ?assertEqual({refuse, "first frame is not a hello"},
                 fabric_peer_server_hs:hello(term_to_binary(hi), SO, rand())),
    {_, CHs} = fabric_peer_client_hs:hello(CO, crypto:strong_rand_bytes(32)),
    ?assertEqual({fail, {auth_failed, bad_challenge}},
                 fabric_peer_client_hs:challenge(<<"garbage">>, CHs, undefined, CO, <<"s">>)),
    ?assertEqual({fail, {auth_failed, refused_by_server}},
                 fabric_peer_client_hs:auth(fabric_peer_server_hs:failure(), CHs, CO, <<"s">>)).
