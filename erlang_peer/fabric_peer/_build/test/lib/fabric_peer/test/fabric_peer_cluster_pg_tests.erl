%% EUnit tests of the pure part of the `pg' feature (docs/protocol.md 18): options, the
%% offer, frame shapes and directions, a server's checks of a request, a client's requests
%% and their answers. `pg' itself is tested on three nodes by fabric_peer_cluster_SUITE.
-module(fabric_peer_cluster_pg_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"heartbeat">>, <<"error">>, <<"session">>, <<"pg">>]).
-define(SRV(G), #{cluster => fab_pg_tests, routing => true, client_groups => G}).

-import(fabric_peer_proto_lib, [fake/1, frame/2, written/1, errors/1, replies/1]).

proto(Role, Extra) -> fabric_peer_proto_lib:proto(Role, Extra, ?FEATS).
proto(Role, Extra, Feats) -> fabric_peer_proto_lib:proto(Role, Extra, Feats).

%%% options and the offer

options_test_() ->
    N = fun(Role, O) -> fabric_peer_opts:normalize(Role, "s", O) end,
    [?_assertEqual({error, {bad_option, {client_groups, needs_cluster}}},
                   N(server, #{client_groups => true})),
     ?_assertMatch({error, {bad_option, {client_groups, _}}}, N(server, ?SRV(yes))),
     ?_assertMatch({error, {bad_option, {client_groups, _}}}, N(server, ?SRV([<<>>]))),
     ?_assertMatch({ok, #{client_groups := [a, <<"b">>]}}, N(server, ?SRV([a, <<"b">>]))),
     ?_assertMatch({error, {bad_option, {unknown, [client_groups]}}},
                   N(client, #{client_groups => true}))].

offered_test_() ->
    F = fun(Role, O) -> {ok, M} = fabric_peer_opts:normalize(Role, "s", O), maps:get(features, M) end,
    [?_assertNot(lists:member(<<"pg">>, F(server, #{}))),
     ?_assertNot(lists:member(<<"pg">>, F(server, ?SRV(false)))),
     ?_assert(lists:member(<<"pg">>, F(server, ?SRV(true)))),
     ?_assert(lists:member(<<"pg">>, F(server, ?SRV([g])))),
     %% independent of global
     ?_assertNot(lists:member(<<"global">>, F(server, ?SRV(true)))),
     ?_assert(lists:member(<<"pg">>, F(server, (?SRV(true))#{register_global => true}))),
     ?_assert(lists:member(<<"pg">>, F(client, #{})))].

%%% frames

classify_test_() ->
    C = fun fabric_peer_cluster_pg:classify/1,
    [?_assertMatch({pg_join, 1, <<"g">>, 2}, C({pg_join, 1, <<"g">>, 2})),
     ?_assertMatch({pg_leave, 1, <<"g">>, 2}, C({pg_leave, 1, <<"g">>, 2})),
     ?_assertMatch({pg_members, 1, <<"g">>}, C({pg_members, 1, <<"g">>})),
     ?_assertEqual({error, unknown_frame}, C({pg_join, 0, <<"g">>, 2})),
     ?_assertEqual({error, unknown_frame}, C({pg_join, 1, g, 2})),
     ?_assertEqual({error, unknown_frame}, C({pg_join, 1, <<>>, 2})),
     ?_assertEqual({error, unknown_frame}, C({pg_leave, 1, binary:copy(<<"a">>, 256), 2})),
     ?_assertEqual({error, unknown_frame}, C({pg_leave, 1, <<"g">>, 0})),
     ?_assertEqual({error, unknown_frame}, C({pg_members, 1, <<"g">>, 2})),
     ?_assertMatch({pg_reply, 1, ok}, C({pg_reply, 1, ok})),
     ?_assertMatch({pg_reply, 1, {ok, []}}, C({pg_reply, 1, {ok, []}})),
     ?_assertMatch({pg_reply, 1, {ok, [{pr, 3}, {pl, 4}]}}, C({pg_reply, 1, {ok, [{pr, 3}, {pl, 4}]}})),
     ?_assertEqual({error, unknown_frame}, C({pg_reply, 1, {ok, [{pr, 0}]}})),
     ?_assertEqual({error, unknown_frame}, C({pg_reply, 1, {ok, [self()]}})),
     ?_assertEqual({error, unknown_frame}, C({pg_reply, 1, {ok, {pr, 3}}})),
     ?_assertMatch({pg_reply, 1, {error, <<"not_member">>}}, C({pg_reply, 1, {error, <<"not_member">>}})),
     ?_assertEqual({error, unknown_frame}, C({pg_reply, 1, {error, <<"in_use">>}}))].

pg_frames_need_pg_test() ->
    F = #{<<"heartbeat">> => true, <<"global">> => true},
    T = {pg_join, 1, <<"g">>, 2},
    ?assertEqual({error, unknown_frame}, fabric_peer_frame:classify(T, extended, F)),
    ?assertEqual({error, unknown_frame}, fabric_peer_frame:classify(T, legacy, F#{<<"pg">> => true})),
    ?assertEqual({global, T}, fabric_peer_frame:classify(T, extended, F#{<<"pg">> => true})).

unsequenced_test() ->
    [?assertNot(fabric_peer_seq:sequenced(T))
     || T <- [{pg_join, 1, <<"g">>, 2}, {pg_leave, 1, <<"g">>, 2}, {pg_members, 1, <<"g">>},
              {pg_reply, 1, ok}]].

wrong_direction_test_() ->
    S = proto(server, ?SRV(true)),
    C = proto(client, #{}),
    [?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({pg_reply, 1, ok}, S)))),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({pg_join, 1, <<"g">>, 1}, C)))),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({pg_members, 1, <<"g">>}, C)))),
     %% a reply for no pending request
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({pg_reply, 7, ok}, C))))].

%%% a server's checks

server_checks_test_() ->
    Listed = proto(server, ?SRV([only, <<"bin_only">>])),
    Any = proto(server, ?SRV(true)),
    Run = fun(P, F) ->
                  {ok, Acts, _} = frame(F, P),
                  {[Cmd || {global, {pg, Cmd}} <- Acts], written(Acts)}
          end,
    NotAllowed = fun(Req) -> {[], [{pg_reply, Req, {error, <<"not_allowed">>}}]} end,
    [?_assertMatch({[{join, 3, <<"only">>, _}], []}, Run(Listed, {pg_join, 3, <<"only">>, 5})),
     ?_assertMatch({[{join, 3, <<"bin_only">>, _}], []}, Run(Listed, {pg_join, 3, <<"bin_only">>, 5})),
     ?_assertEqual(NotAllowed(3), Run(Listed, {pg_join, 3, <<"other">>, 5})),
     ?_assertEqual(NotAllowed(4), Run(Listed, {pg_members, 4, <<"other">>})),
     ?_assertEqual(NotAllowed(5), Run(Listed, {pg_leave, 5, <<"other">>, 5})),
     ?_assertMatch({[{members, 4, <<"any">>}], []}, Run(Any, {pg_members, 4, <<"any">>})),
     %% no proxy for A: not a member, without asking pg
     ?_assertEqual({[], [{pg_reply, 6, {error, <<"not_member">>}}]},
                   Run(Any, {pg_leave, 6, <<"any">>, 9}))].

server_join_then_leave_uses_the_same_proxy_test() ->
    P0 = proto(server, ?SRV(true)),
    {ok, A1, P1} = frame({pg_join, 3, <<"g">>, 5}, P0),
    [{join, 3, <<"g">>, Proxy}] = [Cmd || {global, {pg, Cmd}} <- A1],
    {ok, A2, _} = frame({pg_leave, 4, <<"g">>, 5}, P1),
    ?assertEqual([{leave, 4, <<"g">>, Proxy}], [Cmd || {global, {pg, Cmd}} <- A2]).

server_dead_process_test() ->
    P0 = proto(server, ?SRV(true)),
    {ok, _, P1} = frame({pg_join, 3, <<"g">>, 5}, P0),
    {ok, _, P2} = frame({'DEAD', {pr, 5}, normal}, P1),
    {ok, Acts, _} = frame({pg_join, 4, <<"g">>, 5}, P2),
    ?assertEqual([{pg_reply, 4, {error, <<"noproc">>}}], written(Acts)).

server_proxy_limit_test() ->
    P = proto(server, (?SRV(true))#{max_proxies => 1}),
    {ok, _, P1} = frame({pg_join, 3, <<"g">>, 5}, P),
    {ok, Acts, _} = frame({pg_join, 4, <<"g">>, 6}, P1),
    ?assertEqual([{pg_reply, 4, {error, <<"limit">>}}], written(Acts)).

%%% a client

client_join_and_answer_test() ->
    C0 = proto(client, #{}),
    {Acts, C1} = fabric_peer_route:finish(
                   fabric_peer_cluster_pg:request(join, <<"g">>, self(), from1, C0)),
    [{pg_join, Req, <<"g">>, Id}] = written(Acts),
    ?assert(is_integer(Id) andalso Id > 0),
    {ok, A2, _} = frame({pg_reply, Req, {error, <<"limit">>}}, C1),
    ?assertEqual([{error, limit}], replies(A2)),
    {ok, A3, _} = frame({pg_reply, Req, ok}, C1),
    ?assertEqual([ok], replies(A3)).

%% members come back as pids: our own exported process as itself, the others as proxies
client_members_test() ->
    C0 = proto(client, #{}),
    {_, C1} = fabric_peer_route:finish(
                fabric_peer_cluster_pg:request(join, <<"g">>, self(), from1, C0)),
    {Acts, C2} = fabric_peer_route:finish(
                   fabric_peer_cluster_pg:request(members, <<"g">>, undefined, from2, C1)),
    [{pg_members, Req, <<"g">>}] = written(Acts),
    [{pg_join, _, _, MyId}] = written(element(1, fabric_peer_route:finish(
                                                  fabric_peer_cluster_pg:request(
                                                    join, <<"g">>, self(), from3, C1)))),
    {ok, A2, _} = frame({pg_reply, Req, {ok, [{pl, MyId}, {pr, 7}]}}, C2),
    ?assertEqual([{ok, [self(), fake(800007)]}], replies(A2)).

client_leave_of_a_process_never_exported_test() ->
    C0 = proto(client, #{}),
    {Acts, _} = fabric_peer_route:finish(
                  fabric_peer_cluster_pg:request(leave, <<"g">>, self(), from1, C0)),
    ?assertEqual([], written(Acts)),
    ?assertEqual([{error, not_member}], replies(Acts)).

client_without_pg_test() ->
    C0 = proto(client, #{}, ?FEATS -- [<<"pg">>]),
    {Acts, _} = fabric_peer_route:finish(
                  fabric_peer_cluster_pg:request(members, <<"g">>, undefined, from1, C0)),
    ?assertEqual([{error, not_supported}], replies(Acts)).
