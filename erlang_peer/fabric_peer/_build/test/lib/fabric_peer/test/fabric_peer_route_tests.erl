%% EUnit tests of the pure parts of `route' (docs/protocol.md 16): frame shapes and
%% directions, a routing server's resolution of {Name, Node}, a client's node set and
%% monitor_node, the options, and the handshake terms (offer, accept, refusal).
-module(fabric_peer_route_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"heartbeat">>, <<"error">>, <<"session">>, <<"route">>]).

fake(N) -> fabric_peer_proto_lib:fake(N).

env(Route) -> (fabric_peer_proto_lib:env())#{route => Route}.

proto(Role, Route) ->
    Extra = case Role of server -> #{routing => true}; client -> #{node => 'me@h'} end,
    {ok, O} = fabric_peer_opts:normalize(Role, "secret", Extra#{allowed => [ping]}),
    P0 = fabric_peer_protocol:new(O#{ref => make_ref()}, env(Route)),
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS},
                                              false, false, P0),
    P.

client() -> proto(client, fun(_) -> none end).

frame(Term, P) -> fabric_peer_protocol:frame(term_to_binary(Term), P).

written(Acts) -> [binary_to_term(B) || {send, _, B} <- Acts].
errors(Acts) -> [C || {write, B} <- Acts, {error, C, _} <- [binary_to_term(B)]].

%%% shapes and directions

classify_test_() ->
    C = fun fabric_peer_route:classify/1,
    [?_assertEqual({nodes, 1}, C({nodes, 1})),
     ?_assertEqual({error, unknown_frame}, C({nodes, 0})),
     ?_assertEqual({whereis_node, 2, <<"a">>, <<"n@h">>}, C({whereis_node, 2, <<"a">>, <<"n@h">>})),
     ?_assertEqual({error, unknown_frame}, C({whereis_node, 2, a, <<"n@h">>})),
     ?_assertEqual({nodes_reply, 3, [<<"a@h">>]}, C({nodes_reply, 3, [<<"a@h">>]})),
     ?_assertEqual({error, unknown_frame}, C({nodes_reply, 3, [a]})),
     ?_assertEqual({nodeup, <<"x@h">>}, C({nodeup, <<"x@h">>})),
     ?_assertEqual({error, unknown_frame}, C({nodedown, x})),
     %% node names are name@host, UTF-8, at most 255 bytes
     ?_assertEqual({error, unknown_frame}, C({nodeup, <<(binary:copy(<<"a">>, 254))/binary, "@h">>})),
     ?_assertMatch({nodeup, _}, C({nodeup, <<(binary:copy(<<"a">>, 253))/binary, "@h">>})),
     ?_assertEqual({error, unknown_frame}, C({nodeup, <<"no_host">>})),
     ?_assertEqual({error, unknown_frame}, C({nodeup, <<"@h">>})),
     ?_assertEqual({error, unknown_frame}, C({nodeup, <<"n@">>})),
     ?_assertEqual({error, unknown_frame}, C({nodeup, <<255, 0>>})),
     ?_assertEqual({error, unknown_frame}, C({nodes_reply, 1, [<<>>]}))].

nodes_reply_atoms_within_the_budget_test() ->
    {ok, O} = fabric_peer_opts:normalize(client, "s", #{node => 'me@h', max_new_atoms => 1}),
    P0 = fabric_peer_protocol:new(O#{ref => make_ref()}, env(fun(_) -> none end)),
    {_, P1} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS}, false, false, P0),
    P2 = fabric_peer_route:nodes(from, fabric_peer_route:established(P1)),
    {Acts, P3} = fabric_peer_route:finish(P2),
    [{nodes, _}, {nodes, Req}] = written(Acts),
    New1 = iolist_to_binary(["fresh_", integer_to_list(erlang:unique_integer([positive])), "@h"]),
    New2 = iolist_to_binary(["fresh_", integer_to_list(erlang:unique_integer([positive])), "@h"]),
    {ok, A, _} = frame({nodes_reply, Req, [<<"me@h">>, New1, New2]}, P3),
    [{reply, from, Atoms}] = [R || {reply, _, _} = R <- A],
    ?assertEqual(['me@h', binary_to_atom(New1)], Atoms).

route_frames_need_route_test() ->
    F = #{<<"heartbeat">> => true},
    ?assertEqual({error, unknown_frame}, fabric_peer_frame:classify({nodes, 1}, extended, F)),
    ?assertEqual({route, {nodes, 1}},
                 fabric_peer_frame:classify({nodes, 1}, extended, F#{<<"route">> => true})),
    %% a whereis_reply answers a whereis_node without `whereis'
    ?assertEqual({whereis_reply, 1, undefined},
                 fabric_peer_frame:classify({whereis_reply, 1, undefined}, extended, #{<<"route">> => true})).

wrong_direction_is_unknown_frame_test_() ->
    S = proto(server, fun(_) -> none end),
    [?_assertMatch({ok, _, _}, frame({nodeup, <<"x@h">>}, client())),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({nodeup, <<"x@h">>}, S)))),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({nodes, 1}, client())))),
     ?_assertEqual([<<"unknown_frame">>],
                   errors(element(2, frame({whereis_node, 1, <<"a">>, <<"b">>}, client())))),
     ?_assertEqual([<<"unknown_frame">>], errors(element(2, frame({nodes_reply, 9, []}, client()))))].

%%% a routing server

routed_message_goes_to_the_other_connection_test() ->
    Conn = fake(700000),
    S = proto(server, fun(<<"c2@h">>) -> {ok, Conn}; (_) -> none end),
    {ok, Acts, _} = frame({m, {svc, 'c2@h'}, {t, {hello, {pr, 4}}}}, S),
    [{route, {msg, Conn, svc, {hello, Proxy}, {svc, 'c2@h'}}}] = [A || {route, _} = A <- Acts],
    ?assertEqual(fake(800004), Proxy).

refused_and_unknown_nodes_test() ->
    S = proto(server, fun(<<"c3@h">>) -> not_allowed; (_) -> none end),
    {ok, A1, _} = frame({m, {svc, 'c3@h'}, x}, S),
    ?assertEqual([<<"not_allowed">>], errors(A1)),
    {ok, A2, _} = frame({m, {svc, 'nobody@h'}, x}, S),
    ?assertEqual([], errors(A2) ++ [A || {route, _} = A <- A2]).

whereis_node_asks_once_per_request_test() ->
    S = proto(server, fun(_) -> none end),
    {ok, A1, S1} = frame({whereis_node, 5, <<"svc">>, <<"c2@h">>}, S),
    [{route, {whereis_node, Tag, <<"svc">>, <<"c2@h">>}}] = A1,
    {ok, A2, S2} = frame({whereis_node, 5, <<"svc">>, <<"c2@h">>}, S1),
    ?assertEqual([<<"unknown_frame">>], errors(A2)),
    {Acts, S3} = fabric_peer_route:finish(fabric_peer_route:whereis_answer(Tag, undefined, S2)),
    ?assertEqual([{whereis_reply, 5, undefined}], written(Acts)),
    %% a second answer (the timeout) is dropped
    {[], _} = fabric_peer_route:finish(fabric_peer_route:whereis_answer(Tag, undefined, S3)).

nodes_pending_twice_is_unknown_frame_test() ->
    S = proto(server, fun(_) -> none end),
    {ok, [{route, {nodes, 2}}], S1} = frame({nodes, 2}, S),
    {ok, A, S2} = frame({nodes, 2}, S1),
    ?assertEqual([<<"unknown_frame">>], errors(A)),
    {Acts, S3} = fabric_peer_route:finish(fabric_peer_route:nodes_reply(2, [<<"a@h">>], S2)),
    ?assertEqual([{nodes_reply, 2, [<<"a@h">>]}], written(Acts)),
    {ok, [{route, {nodes, 2}}], _} = frame({nodes, 2}, S3).

%%% a client

node_set_and_monitors_test() ->
    P0 = client(),
    %% established: the client asked for the node set
    Me = self(),
    {ok, P1} = fabric_peer_route:monitor_node(Me, <<"a@h">>, true, P0),
    {Acts1, P2} = fabric_peer_route:finish(P1),
    [{nodes, R1}] = written(Acts1),
    {ok, A2, P3} = frame({nodes_reply, R1, [<<"a@h">>, <<"b@h">>]}, P2),
    ?assertEqual([], [D || {deliver, _, _} = D <- A2]),
    {ok, A3, P4} = frame({nodedown, <<"b@h">>}, P3),
    ?assertEqual([], [D || {deliver, _, _} = D <- A3]),
    {ok, A4, P5} = frame({nodedown, <<"a@h">>}, P4),
    ?assertEqual([{deliver, Me, {nodedown, 'a@h'}}], [D || {deliver, _, _} = D <- A4]),
    %% once: a second nodedown tells nobody
    {ok, A5, _} = frame({nodedown, <<"a@h">>}, P5),
    ?assertEqual([], [D || {deliver, _, _} = D <- A5]).

monitor_of_a_node_that_is_not_up_fires_at_once_test() ->
    Me = self(),
    {ok, P1} = fabric_peer_route:monitor_node(Me, <<"z@h">>, true, client()),
    {Acts, P2} = fabric_peer_route:finish(P1),
    [{nodes, R}] = written(Acts),
    {ok, A, _} = frame({nodes_reply, R, [<<"a@h">>]}, P2),
    ?assertEqual([{deliver, Me, {nodedown, 'z@h'}}], [D || {deliver, _, _} = D <- A]).

demonitor_and_session_end_test() ->
    Me = self(),
    {ok, P1} = fabric_peer_route:monitor_node(Me, <<"a@h">>, true, client()),
    {ok, P2} = fabric_peer_route:monitor_node(Me, <<"a@h">>, false, P1),
    {A1, _} = fabric_peer_route:finish(fabric_peer_route:session_end(P2)),
    ?assertEqual([], [D || {deliver, _, _} = D <- A1]),
    {A2, _} = fabric_peer_route:finish(fabric_peer_route:session_end(P1)),
    ?assertEqual([{deliver, Me, {nodedown, 'a@h'}}], [D || {deliver, _, _} = D <- A2]).

without_route_not_supported_test() ->
    {ok, O} = fabric_peer_opts:normalize(client, "s", #{}),
    P0 = fabric_peer_protocol:new(O#{ref => make_ref()}, env(fun(_) -> none end)),
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => [<<"heartbeat">>]},
                                              false, false, P0),
    ?assertMatch({{error, not_supported}, _}, fabric_peer_route:monitor_node(self(), <<"a">>, true, P)).

%%% options and handshake terms

options_test_() ->
    {ok, Off} = fabric_peer_opts:normalize(server, "s", #{}),
    {ok, On} = fabric_peer_opts:normalize(server, "s", #{routing => true}),
    {ok, Fun} = fabric_peer_opts:normalize(server, "s", #{routing => fun(_, _) -> true end,
                                                          max_proxies => 5}),
    {ok, C0} = fabric_peer_opts:normalize(client, "s", #{}),
    {ok, C1} = fabric_peer_opts:normalize(client, "s", #{node => 'x@h'}),
    [?_assertNot(lists:member(<<"route">>, maps:get(features, Off))),
     ?_assert(lists:member(<<"route">>, maps:get(features, On))),
     ?_assertEqual(10000, maps:get(max_proxies, On)),
     ?_assertEqual(5, maps:get(max_proxies, Fun)),
     ?_assertNot(lists:member(<<"route">>, maps:get(features, C0))),
     ?_assert(lists:member(<<"route">>, maps:get(features, C1))),
     ?_assertMatch({error, {bad_option, {routing, _}}},
                   fabric_peer_opts:normalize(server, "s", #{routing => true, features => [route]})),
     ?_assertMatch({error, {bad_option, {routing, _}}},
                   fabric_peer_opts:normalize(server, "s", #{routing => fun(_) -> true end}))].

offer_and_info_test() ->
    O = fabric_peer_handshake:offer(#{version => 1, features => [<<"heartbeat">>, <<"route">>],
                                      node => <<"s@h">>, max_frame => 10, heartbeat => 0,
                                      route_heartbeat => 700}),
    ?assertEqual(700, maps:get(<<"route_heartbeat">>, O)),
    ?assertMatch({ok, #{route_heartbeat := 700}}, fabric_peer_handshake:parse_offer(O)),
    NoRoute = fabric_peer_handshake:offer(#{version => 1, features => [], node => <<"s">>,
                                            max_frame => 1, heartbeat => 0, route_heartbeat => 5}),
    ?assertNot(is_map_key(<<"route_heartbeat">>, NoRoute)),
    ?assertMatch({ok, #{refused := <<"node_in_use">>, resumed := false}},
                 fabric_peer_handshake:parse_info(#{<<"resumed">> => false,
                                                    <<"refused">> => <<"node_in_use">>})).

predicate_that_crashes_refuses_test() ->
    ok = case ets:whereis(fabric_peer_router) of
             undefined -> fabric_peer_router:create_table();
             _ -> ok
         end,
    Ref = make_ref(),
    O = #{routing => fun(_, _) -> error(boom) end, ref => Ref},
    ?assertNot(fabric_peer_router:allowed(O, <<"a">>, <<"b">>)),
    ?assertNot(fabric_peer_router:allowed(O#{routing => fun(_, _) -> yes end}, <<"a">>, <<"b">>)),
    ?assert(fabric_peer_router:allowed(O#{routing => true}, undefined, <<"b">>)),
    ok = fabric_peer_router:forget(Ref).
