%% EUnit tests of fabric_peer_session: the id tables, graves, gen-call tags and outbox as
%% pure data (pids are values here; no process is monitored).
-module(fabric_peer_session_tests).

-include_lib("eunit/include/eunit.hrl").

pid(N) -> list_to_pid(lists:flatten(io_lib:format("<0.~b.~b>", [N rem 32768, 100 + N div 32768]))).

exports_get_increasing_ids_once_test() ->
    S0 = fabric_peer_session:new(),
    {new, 1, S1} = fabric_peer_session:add_export(pid(1), S0),
    {new, 2, S2} = fabric_peer_session:add_export(pid(2), S1),
    ?assertMatch({known, 1, _}, fabric_peer_session:add_export(pid(1), S2)),
    ?assertEqual({ok, pid(2)}, fabric_peer_session:exported(2, S2)),
    ?assertEqual(2, fabric_peer_session:export_count(S2)),
    ?assert(fabric_peer_session:issued(2, S2)),
    ?assertNot(fabric_peer_session:issued(3, S2)).

an_ended_export_is_buried_with_its_reason_test() ->
    {new, 1, S1} = fabric_peer_session:add_export(pid(1), fabric_peer_session:new()),
    Ref = make_ref(),
    S2 = fabric_peer_session:watch_export(Ref, 1, S1),
    {dead, Dead, S3} = fabric_peer_session:export_down(Ref, pid(1), crashed, S2),
    ?assertEqual({'DEAD', {pr, 1}, crashed}, Dead),
    ?assertEqual(error, fabric_peer_session:exported(1, S3)),
    ?assertEqual({ok, {1, crashed}}, fabric_peer_session:grave_of(pid(1), S3)),
    ?assertEqual({ok, pid(1)}, fabric_peer_session:grave_pid(1, S3)),
    %% remembered for a resume once written (it may wait for the process's last messages)
    ?assertEqual([], fabric_peer_session:recent_dead(S3)),
    ?assertEqual([Dead], fabric_peer_session:recent_dead(fabric_peer_session:dead_written(Dead, S3))),
    ?assertEqual(error, fabric_peer_session:export_down(make_ref(), pid(1), x, S3)).

graves_are_bounded_oldest_first_test() ->
    S = lists:foldl(fun(N, Acc) ->
                            {new, N, A1} = fabric_peer_session:add_export(pid(N), Acc),
                            Ref = make_ref(),
                            {dead, Dead, A2} = fabric_peer_session:export_down(
                                                 Ref, pid(N), normal,
                                                 fabric_peer_session:watch_export(Ref, N, A1)),
                            fabric_peer_session:dead_written(Dead, A2)
                    end, fabric_peer_session:new(), lists:seq(1, 1025)),
    ?assertEqual(error, fabric_peer_session:grave_pid(1, S)),
    ?assertEqual({ok, pid(2)}, fabric_peer_session:grave_pid(2, S)),
    ?assertEqual(256, length(fabric_peer_session:recent_dead(S))).

a_proxy_ended_by_dead_stays_its_id_test() ->
    S1 = fabric_peer_session:add_proxy(7, pid(70), fabric_peer_session:new()),
    Ref = make_ref(),
    S2 = fabric_peer_session:watch_proxy(Ref, 7, S1),
    S3 = fabric_peer_session:end_proxy(pid(70), S2),
    ?assertEqual(error, fabric_peer_session:proxy_of(7, S3)),
    ?assertEqual({ok, 7}, fabric_peer_session:buried_proxy(pid(70), S3)),
    ?assertEqual({ok, pid(70)}, fabric_peer_session:dead_proxy(7, S3)),
    ?assert(fabric_peer_session:remote_ended(7, S3)),
    %% its DOWN afterwards is only forgotten
    ?assertMatch({ok, _}, fabric_peer_session:proxy_down(Ref, pid(70), S3)).

a_proxy_killed_locally_is_reported_test() ->
    S1 = fabric_peer_session:add_proxy(7, pid(70), fabric_peer_session:new()),
    Ref = make_ref(),
    S2 = fabric_peer_session:watch_proxy(Ref, 7, S1),
    {killed_live, 7, S3} = fabric_peer_session:proxy_down(Ref, pid(70), S2),
    ?assertEqual(0, fabric_peer_session:proxy_count(S3)),
    ?assertEqual({ok, 7}, fabric_peer_session:buried_proxy(pid(70), S3)).

reset_returns_what_the_connection_must_end_test() ->
    S1 = fabric_peer_session:add_proxy(7, pid(70), fabric_peer_session:new()),
    {new, 1, S2} = fabric_peer_session:add_export(pid(1), S1),
    Ref = make_ref(),
    S3 = fabric_peer_session:call_in(CallRef = make_ref(), pid(70),
                                     fabric_peer_session:watch_export(Ref, 1, S2)),
    {Proxies, Monitors, S4} = fabric_peer_session:reset(S3),
    ?assertEqual({[pid(70)], [Ref]}, {Proxies, Monitors}),
    ?assertEqual(1, fabric_peer_session:next_id(S4)),
    ?assertEqual(0, fabric_peer_session:proxy_count(S4)),
    %% a late reply still finds its caller's tag
    ?assertMatch({ok, _}, fabric_peer_session:call_out(CallRef, pid(70), S4)).

gen_call_tags_are_answered_once_and_bounded_test() ->
    S1 = fabric_peer_session:call_in(R = make_ref(), pid(70), fabric_peer_session:new()),
    ?assertEqual(error, fabric_peer_session:call_out(R, pid(71), S1)),
    {ok, S2} = fabric_peer_session:call_out(R, pid(70), S1),
    ?assertEqual(error, fabric_peer_session:call_out(R, pid(70), S2)),
    Refs = [make_ref() || _ <- lists:seq(1, 4097)],
    S3 = lists:foldl(fun(X, Acc) -> fabric_peer_session:call_in(X, pid(70), Acc) end,
                     fabric_peer_session:new(), Refs),
    ?assertEqual(error, fabric_peer_session:call_out(hd(Refs), pid(70), S3)),
    ?assertMatch({ok, _}, fabric_peer_session:call_out(lists:last(Refs), pid(70), S3)).

the_outbox_bounds_messages_not_control_frames_test() ->
    S0 = fabric_peer_session:new(),
    {ok, S1} = fabric_peer_session:enqueue(msg, <<"m1">>, 1, S0),
    ?assertMatch({{error, queue_full}, _}, fabric_peer_session:enqueue(msg, <<"m2">>, 1, S1)),
    {ok, S2} = fabric_peer_session:enqueue(ctrl, <<"c1">>, 1, S1),
    ?assertEqual(2, fabric_peer_session:outbox_len(S2)),
    {Frames, S3} = fabric_peer_session:take_outbox(S2),
    ?assertEqual([<<"m1">>, <<"c1">>], Frames),
    ?assertEqual(0, fabric_peer_session:outbox_len(S3)),
    ?assertMatch({{error, not_connected}, _}, fabric_peer_session:enqueue(msg, <<"m">>, 0, S0)).
