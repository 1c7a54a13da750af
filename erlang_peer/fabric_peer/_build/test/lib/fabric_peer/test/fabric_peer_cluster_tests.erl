%% EUnit tests of the pure parts of clusters (docs/cluster.md) and of the `global' feature
%% (docs/protocol.md 17): options, frame shapes and directions, a server's checks of a
%% request, a client's request and its answer. The global registry itself and the
%% directory are tested on three nodes by fabric_peer_cluster_SUITE.
-module(fabric_peer_cluster_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"heartbeat">>, <<"error">>, <<"session">>, <<"global">>]).

-import(fabric_peer_proto_lib, [frame/2, written/1, errors/1]).

proto(Role, Extra) -> fabric_peer_proto_lib:proto(Role, Extra, ?FEATS).
proto(Role, Extra, Feats) -> fabric_peer_proto_lib:proto(Role, Extra, Feats).

%%% options

options_test_() ->
    N = fun(Role, O) -> fabric_peer_opts:normalize(Role, "s", O) end,
    [?_assertEqual({error, {bad_option, {cluster, needs_routing}}}, N(server, #{cluster => fab})),
     ?_assertMatch({error, {bad_option, {cluster, "x"}}}, N(server, #{cluster => "x", routing => true})),
     ?_assertMatch({ok, #{cluster := fab}}, N(server, #{cluster => fab, routing => true})),
     ?_assertMatch({ok, #{cluster := false}}, N(server, #{})),
     ?_assertMatch({error, {bad_option, {unknown, [cluster]}}}, N(client, #{cluster => fab})),
     ?_assertMatch({error, {bad_option, {register_global, _}}}, N(server, #{register_global => yes})),
     ?_assertMatch({error, {bad_option, {fallbacks, _}}}, N(client, #{fallbacks => [{"h", 0}]})),
     ?_assertMatch({error, {bad_option, {fallbacks, _}}}, N(client, #{fallbacks => {"h", 1}})),
     ?_assertMatch({ok, #{fallbacks := [{"h", 1}, {<<"h2">>, 2}]}},
                   N(client, #{fallbacks => [{"h", 1}, {<<"h2">>, 2}]}))].

%% `global' is offered by a server only with register_global; a client accepts it
offered_test_() ->
    F = fun(Role, O) -> {ok, M} = fabric_peer_opts:normalize(Role, "s", O), maps:get(features, M) end,
    [?_assertNot(lists:member(<<"global">>, F(server, #{}))),
     ?_assert(lists:member(<<"global">>, F(server, #{register_global => true}))),
     ?_assert(lists:member(<<"global">>, F(server, #{register_global => [a]}))),
     ?_assert(lists:member(<<"global">>, F(client, #{})))].

%%% frames

classify_test_() ->
    C = fun fabric_peer_cluster_global:classify/1,
    [?_assertMatch({register_global, 1, <<"n">>, 2}, C({register_global, 1, <<"n">>, 2})),
     ?_assertEqual({error, unknown_frame}, C({register_global, 0, <<"n">>, 2})),
     ?_assertEqual({error, unknown_frame}, C({register_global, 1, n, 2})),
     ?_assertEqual({error, unknown_frame}, C({register_global, 1, <<>>, 2})),
     ?_assertEqual({error, unknown_frame}, C({register_global, 1, binary:copy(<<"a">>, 256), 2})),
     ?_assertEqual({error, unknown_frame}, C({register_global, 1, <<"n">>, 0})),
     ?_assertMatch({unregister_global, 1, <<"n">>}, C({unregister_global, 1, <<"n">>})),
     ?_assertMatch({global_reply, 1, ok}, C({global_reply, 1, ok})),
     ?_assertMatch({global_reply, 1, {error, <<"in_use">>}}, C({global_reply, 1, {error, <<"in_use">>}})),
     ?_assertEqual({error, unknown_frame}, C({global_reply, 1, {error, <<"other">>}})),
     ?_assertEqual({error, unknown_frame}, C({global_reply, 1, yes}))].

global_frames_need_global_test() ->
    F = #{<<"heartbeat">> => true},
    T = {register_global, 1, <<"n">>, 2},
    ?assertEqual({error, unknown_frame}, fabric_peer_frame:classify(T, extended, F)),
    ?assertEqual({error, unknown_frame}, fabric_peer_frame:classify(T, legacy, F#{<<"global">> => true})),
    ?assertEqual({global, T}, fabric_peer_frame:classify(T, extended, F#{<<"global">> => true})).

%% the server never accepts global_reply, a client never register_global
wrong_direction_test_() ->
    S = proto(server, #{register_global => true}),
    C = proto(client, #{}),
    [?_assertMatch({ok, _, _}, frame({global_reply, 1, ok}, S)),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({global_reply, 1, ok}, S)))),
     ?_assertEqual([<<"unknown_frame">>],
                   errors(element(2, frame({register_global, 1, <<"n">>, 1}, C)))),
     %% a reply for no pending request
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({global_reply, 7, ok}, C))))].

%%% a server's checks

%% a name the option allows becomes a register action with the proxy for A; others are
%% answered at once
server_checks_test_() ->
    Listed = proto(server, #{register_global => [known_name_for_tests]}),
    Any = proto(server, #{register_global => true}),
    Reg = fun(P, Name) ->
                  {ok, Acts, _} = frame({register_global, 3, Name, 5}, P),
                  {[Cmd || {global, Cmd} <- Acts], written(Acts)}
          end,
    Fresh = iolist_to_binary(["fresh_", integer_to_list(erlang:unique_integer([positive]))]),
    [?_assertMatch({[{register, 3, known_name_for_tests, _}], []}, Reg(Listed, <<"known_name_for_tests">>)),
     ?_assertEqual({[], [{global_reply, 3, {error, <<"not_allowed">>}}]}, Reg(Listed, <<"ping">>)),
     ?_assertEqual({[], [{global_reply, 3, {error, <<"not_allowed">>}}]}, Reg(Listed, Fresh)),
     %% system names never
     ?_assertEqual({[], [{global_reply, 3, {error, <<"not_allowed">>}}]}, Reg(Any, <<"fabric_server">>)),
     ?_assertEqual({[], [{global_reply, 3, {error, <<"not_allowed">>}}]}, Reg(Any, <<"rex">>)),
     %% with true a new name costs an atom
     ?_assertMatch({[{register, 3, _, _}], []}, Reg(Any, Fresh))].

server_atom_budget_test() ->
    P = proto(server, #{register_global => true, max_new_atoms => 0}),
    Fresh = iolist_to_binary(["fresh_", integer_to_list(erlang:unique_integer([positive]))]),
    {ok, Acts, _} = frame({register_global, 3, Fresh, 5}, P),
    ?assertEqual([{global_reply, 3, {error, <<"limit">>}}], written(Acts)),
    ?assertError(badarg, binary_to_existing_atom(Fresh, utf8)).

unregister_unknown_name_test() ->
    P = proto(server, #{register_global => true}),
    Fresh = iolist_to_binary(["never_", integer_to_list(erlang:unique_integer([positive]))]),
    {ok, Acts, _} = frame({unregister_global, 4, Fresh}, P),
    ?assertEqual([{global_reply, 4, {error, <<"not_registered">>}}], written(Acts)).

%%% a client

client_request_and_answer_test() ->
    C0 = proto(client, #{}),
    C1 = fabric_peer_cluster_global:request(register, some_name, self(), from1, C0),
    {Acts, C2} = fabric_peer_route:finish(C1),
    [{register_global, Req, <<"some_name">>, Id}] = written(Acts),
    ?assert(is_integer(Id) andalso Id > 0),
    {ok, A2, _} = frame({global_reply, Req, {error, <<"in_use">>}}, C2),
    ?assertEqual([{reply, from1, {error, in_use}}], [R || {reply, _, _} = R <- A2]).

client_without_global_test() ->
    C0 = proto(client, #{}, ?FEATS -- [<<"global">>]),
    {Acts, _} = fabric_peer_route:finish(
                  fabric_peer_cluster_global:request(register, n, self(), from1, C0)),
    ?assertEqual([{reply, from1, {error, not_supported}}], Acts).

%%% name lookups: local, then global

whereis_name_test() ->
    Name = list_to_atom("cluster_tests_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ?assertEqual(undefined, fabric_peer_cluster:whereis_name(Name)),
    Pid = spawn(fun() -> receive stop -> ok end end),
    yes = global:register_name(Name, Pid),
    ?assertEqual(Pid, fabric_peer_cluster:whereis_name(Name)),
    Local = spawn(fun() -> receive stop -> ok end end),
    true = register(Name, Local),
    ?assertEqual(Local, fabric_peer_cluster:whereis_name(Name)),
    [P ! stop || P <- [Pid, Local]],
    _ = global:unregister_name(Name),
    ok.
