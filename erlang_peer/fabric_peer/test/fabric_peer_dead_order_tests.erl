%% EUnit tests of fabric_peer_dead_order: the order of DEAD notices behind the barriers
%% (pure), and the protocol's actions for an exported process that ends while proxies are
%% live (no process runs: proxies are fake pids, fabric_peer_proto_lib).
-module(fabric_peer_dead_order_tests).

-include_lib("eunit/include/eunit.hrl").

-import(fabric_peer_proto_lib, [fake/1, frame/2, written/1]).

dead(Id) -> {'DEAD', {pr, Id}, {reason, Id}}.

%%% the order (pure)

nothing_waits_without_proxies_test() ->
    O0 = fabric_peer_dead_order:new(),
    {none, [D], O1} = fabric_peer_dead_order:add(dead(1), [], O0),
    ?assertEqual(dead(1), D),
    ?assertNot(fabric_peer_dead_order:waiting(1, O1)),
    ?assertEqual({[], O1}, fabric_peer_dead_order:take_all(O1)).

a_dead_waits_for_every_proxy_test() ->
    {N, [], O1} = fabric_peer_dead_order:add(dead(1), [fake(1), fake(2)], fabric_peer_dead_order:new()),
    ?assert(is_integer(N)),
    ?assert(fabric_peer_dead_order:waiting(1, O1)),
    {[], O2} = fabric_peer_dead_order:answer(fake(1), N, O1),
    %% a second answer of the same proxy changes nothing
    {[], O2} = fabric_peer_dead_order:answer(fake(1), N, O2),
    {[D], O3} = fabric_peer_dead_order:answer(fake(2), N, O2),
    ?assertEqual(dead(1), D),
    ?assertNot(fabric_peer_dead_order:waiting(1, O3)).

a_later_dead_never_overtakes_an_earlier_one_test() ->
    Ps = [fake(1), fake(2)],
    {N1, [], O1} = fabric_peer_dead_order:add(dead(1), Ps, fabric_peer_dead_order:new()),
    {N2, [], O2} = fabric_peer_dead_order:add(dead(2), Ps, O1),
    ?assertNotEqual(N1, N2),
    %% the second barrier passes first: its DEAD waits for the first
    {[], O3} = fabric_peer_dead_order:answer(fake(1), N2, O2),
    {[], O4} = fabric_peer_dead_order:answer(fake(2), N2, O3),
    ?assert(fabric_peer_dead_order:waiting(2, O4)),
    {[], O5} = fabric_peer_dead_order:answer(fake(1), N1, O4),
    {Ds, O6} = fabric_peer_dead_order:answer(fake(2), N1, O5),
    ?assertEqual([dead(1), dead(2)], Ds),
    ?assertNot(fabric_peer_dead_order:waiting(2, O6)).

a_dead_without_proxies_waits_behind_an_earlier_one_test() ->
    {N1, [], O1} = fabric_peer_dead_order:add(dead(1), [fake(1)], fabric_peer_dead_order:new()),
    {none, [], O2} = fabric_peer_dead_order:add(dead(2), [], O1),
    {Ds, _} = fabric_peer_dead_order:answer(fake(1), N1, O2),
    ?assertEqual([dead(1), dead(2)], Ds).

a_proxy_that_ends_answers_every_barrier_test() ->
    Ps = [fake(1), fake(2)],
    {N1, [], O1} = fabric_peer_dead_order:add(dead(1), Ps, fabric_peer_dead_order:new()),
    {_, [], O2} = fabric_peer_dead_order:add(dead(2), Ps, O1),
    {[], O3} = fabric_peer_dead_order:gone(fake(2), O2),
    %% (the first waited for fake(2) too)
    ?assertMatch({[{'DEAD', {pr, 1}, _}], _}, fabric_peer_dead_order:answer(fake(1), N1, O3)),
    {[_], O4} = fabric_peer_dead_order:answer(fake(1), N1, O3),
    ?assertMatch({[{'DEAD', {pr, 2}, _}], _}, fabric_peer_dead_order:gone(fake(1), O4)),
    %% a process that is no proxy of a barrier changes nothing
    ?assertEqual({[], O2}, fabric_peer_dead_order:gone(fake(3), O2)).

stale_answers_are_ignored_and_numbers_go_on_test() ->
    {N1, [], O1} = fabric_peer_dead_order:add(dead(1), [fake(1)], fabric_peer_dead_order:new()),
    O2 = fabric_peer_dead_order:clear(O1),
    ?assertNot(fabric_peer_dead_order:waiting(1, O2)),
    ?assertEqual({[], O2}, fabric_peer_dead_order:answer(fake(1), N1, O2)),
    {N2, [], O3} = fabric_peer_dead_order:add(dead(2), [fake(1)], O2),
    ?assert(N2 > N1),
    ?assertEqual({[], O3}, fabric_peer_dead_order:answer(fake(1), N1, O3)).

take_all_gives_what_waits_in_order_test() ->
    {_, [], O1} = fabric_peer_dead_order:add(dead(1), [fake(1)], fabric_peer_dead_order:new()),
    {_, [], O2} = fabric_peer_dead_order:add(dead(2), [fake(2)], O1),
    {Ds, O3} = fabric_peer_dead_order:take_all(O2),
    ?assertEqual([dead(1), dead(2)], Ds),
    ?assertNot(fabric_peer_dead_order:waiting(2, O3)).

%%% the protocol

%% An established state with this test process exported as id 1 (monitor `Ref') and a live
%% proxy for the peer's process 7 (fake(800007), the proto_lib env's).
exported_and_proxy(Mode) ->
    P0 = case Mode of
             extended -> fabric_peer_proto_lib:proto(server, #{}, [<<"session">>]);
             legacy ->
                 {_, L} = fabric_peer_protocol:established(
                            #{mode => legacy}, false, false, fabric_peer_proto_lib:proto(server, #{}, [])),
                 L
         end,
    {ok, [{monitor_export, _, 1}, _], P1} = fabric_peer_protocol:send(peer_name, self(), P0),
    Ref = make_ref(),
    {ok, [{monitor_proxy, Proxy, 7} | _], P2} =
        frame({m, 1, {pr, 7}}, fabric_peer_protocol:watch_export(Ref, 1, P1)),
    {Ref, Proxy, P2}.

the_dead_waits_for_the_barrier_of_the_live_proxies_test_() ->
    [fun() ->
             {Ref, Proxy, P} = exported_and_proxy(Mode),
             {[{control, Proxy, {barrier, N}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
             ?assertMatch(#{exported := 0}, fabric_peer_protocol:info(P1)),
             {Acts, _} = fabric_peer_protocol:barrier_passed(Proxy, N, P1),
             ?assertEqual([{'DEAD', {pr, 1}, gone}], written(Acts))
     end || Mode <- [extended, legacy]].

a_proxy_that_ends_lets_the_dead_go_test() ->
    {Ref, Proxy, P} = exported_and_proxy(extended),
    {[{control, Proxy, {barrier, _}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
    {Acts, _} = fabric_peer_protocol:down(make_ref(), Proxy, killed, P1),
    ?assertEqual([{'DEAD', {pr, 1}, gone}], [F || {'DEAD', _, _} = F <- written(Acts)]).

%% The ended process's message comes through the proxy before the barrier's answer: it
%% names the process by its id without repeating the DEAD, which follows.
a_message_before_the_barrier_names_the_process_by_its_id_test_() ->
    [fun() ->
             {Ref, Proxy, P} = exported_and_proxy(Mode),
             {[{control, Proxy, {barrier, N}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
             {Acts, P2} = fabric_peer_protocol:proxy_msg(Proxy, {last, self()}, P1),
             [{m, 7, Payload}] = written(Acts),
             ?assertEqual({last, {pr, 1}}, plain(Payload)),
             {Acts2, _} = fabric_peer_protocol:barrier_passed(Proxy, N, P2),
             ?assertEqual([{'DEAD', {pr, 1}, gone}], written(Acts2))
     end || Mode <- [extended, legacy]].

%% (a payload as the wire has it: `{t, Term}' of an extended peer, the term of a legacy one)
plain({t, T}) -> T;
plain(T) -> T.

%% A DEAD waiting at a disconnect is written when its barrier passes, into the outbox, and
%% it is remembered for a resume only from then on.
a_dead_waiting_across_a_disconnect_is_kept_test() ->
    {Ref, Proxy, P} = exported_and_proxy(extended),
    {[{control, Proxy, {barrier, N}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
    {_, P2} = fabric_peer_protocol:lost({error, not_connected}, P1),
    {[], P3} = fabric_peer_protocol:barrier_passed(Proxy, N, P2),
    Feats = #{mode => extended, features => [<<"session">>]},
    {Acts, P4} = fabric_peer_protocol:established(Feats, false, true, P3),
    ?assertEqual([{'DEAD', {pr, 1}, gone}], written(Acts)),
    %% resent after the next resume too (the last DEAD notices)
    {_, P5} = fabric_peer_protocol:lost({error, not_connected}, P4),
    {Acts2, _} = fabric_peer_protocol:established(Feats, false, true, P5),
    ?assertEqual([{'DEAD', {pr, 1}, gone}], written(Acts2)).

the_session_end_drops_what_waits_test() ->
    {Ref, Proxy, P} = exported_and_proxy(extended),
    {[{control, Proxy, {barrier, N}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
    {_, P2} = fabric_peer_protocol:reset(P1),
    ?assertEqual({[], P2}, fabric_peer_protocol:barrier_passed(Proxy, N, P2)).

the_connection_end_writes_what_waits_test() ->
    {Ref, Proxy, P} = exported_and_proxy(extended),
    {[{control, Proxy, {barrier, _}}], P1} = fabric_peer_protocol:down(Ref, self(), gone, P),
    ?assertEqual([{'DEAD', {pr, 1}, gone}], written(fabric_peer_protocol:terminate(P1))).
