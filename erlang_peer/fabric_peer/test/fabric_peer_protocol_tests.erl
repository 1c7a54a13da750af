%% EUnit tests of fabric_peer_protocol: frames and commands in, actions out, with no socket
%% and no connection process. Proxies are fake pids made by the env (no process runs).
-module(fabric_peer_protocol_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"link">>, <<"heartbeat">>, <<"error">>, <<"session">>]).

%%% helpers

opts(Extra) ->
    {ok, O} = fabric_peer_opts:normalize(server, "secret", maps:merge(#{allowed => [ping]}, Extra)),
    O.

%% a pid value no process has (a high serial a test VM does not reach)
fake(N) -> fabric_peer_proto_lib:fake(N).

ping() -> fake(900001).

%% the shared env, with a registered `ping', telling this test of each proxy it spawns
env() ->
    Test = self(),
    (fabric_peer_proto_lib:env())#{spawn_proxy => fun(Id) -> Test ! {spawned, Id}, fake(800000 + Id) end,
                                   whereis => fun(ping) -> ping(); (_) -> undefined end}.

proto(Extra) -> fabric_peer_protocol:new(opts(Extra), env()).

extended() -> extended(#{}).
extended(Extra) ->
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS},
                                              false, false, proto(Extra)),
    P.

legacy() ->
    {_, P} = fabric_peer_protocol:established(#{mode => legacy}, false, false, proto(#{})),
    P.

frame(Term, P) -> fabric_peer_protocol:frame(term_to_binary(Term), P).

spawned() ->
    receive {spawned, Id} -> [Id | spawned()] after 0 -> [] end.

errors_written(Acts) ->
    [binary_to_term(B) || {write, B} <- Acts].

%%% frames from the peer

message_to_a_name_is_delivered_test() ->
    {ok, Acts, _} = frame({m, ping, {t, {hello, 1}}}, extended()),
    ?assertEqual([{deliver, ping(), {hello, 1}}], Acts).

a_remote_pid_starts_one_proxy_test() ->
    _ = spawned(),
    {ok, Acts, P1} = frame({m, ping, {t, {from, {pr, 7}}}}, extended()),
    Proxy = fake(800007),
    ?assertEqual([{monitor_proxy, Proxy, 7}, {deliver, ping(), {from, Proxy}}], Acts),
    {ok, Acts2, _} = frame({m, ping, {t, {again, {pr, 7}}}}, P1),
    ?assertEqual([{deliver, ping(), {again, Proxy}}], Acts2),
    ?assertEqual([7], spawned()).

max_proxies_refuses_the_whole_frame_before_any_proxy_starts_test() ->
    _ = spawned(),
    {ok, Acts, P1} = frame({m, ping, [{pr, 1}, {pr, 2}]}, extended(#{max_proxies => 1})),
    ?assertEqual([], spawned()),
    ?assertMatch([{error, <<"limit">>, _}], errors_written(Acts)),
    ?assertEqual([], [A || {deliver, _, _} = A <- Acts]),
    ?assertMatch(#{errors := 1, proxies := 0}, fabric_peer_protocol:info(P1)).

unknown_id_is_an_error_frame_test() ->
    {ok, Acts, P1} = frame({m, 99, x}, extended()),
    ?assertMatch([{error, <<"unknown_id">>, _}], errors_written(Acts)),
    ?assertMatch(#{errors := 1, frames_in := 1}, fabric_peer_protocol:info(P1)).

a_legacy_peer_gets_no_error_frame_test() ->
    {ok, Acts, P1} = frame({m, 99, x}, legacy()),
    ?assertEqual([], Acts),
    ?assertMatch(#{errors := 1}, fabric_peer_protocol:info(P1)).

too_many_errors_close_test() ->
    P0 = extended(#{max_errors => 2}),
    {ok, _, P1} = frame({m, 99, x}, P0),
    {ok, _, P2} = frame({m, 99, x}, P1),
    {close, Acts, _} = frame({m, 99, x}, P2),
    ?assertMatch([{error, <<"unknown_id">>, _}, {error, <<"too_many_errors">>, _}],
                 errors_written(Acts)).

a_name_outside_the_policy_is_refused_test() ->
    {ok, Acts, _} = frame({m, secret_service, hi}, extended()),
    ?assertMatch([{error, <<"not_allowed">>, _}], errors_written(Acts)).

dead_ends_the_proxy_and_its_id_survives_test() ->
    {ok, _, P1} = frame({m, ping, {pr, 7}}, extended()),
    Proxy = fake(800007),
    {ok, Acts, P2} = frame({'DEAD', {pr, 7}, crashed}, P1),
    ?assertEqual([{control, Proxy, {die, crashed}}, {forget_proxy, Proxy}], Acts),
    %% no longer a live proxy to send through; shipped back, the dead proxy is still
    %% {pl, 7}, and {pr, 7} again is the same dead proxy
    ?assertMatch({{error, not_a_proxy}, [], _}, fabric_peer_protocol:send(Proxy, hi, P2)),
    {ok, [{send, msg, Bin2}], _} = fabric_peer_protocol:send(ping, {Proxy}, P2),
    ?assertEqual({m, ping, {t, {{pl, 7}}}}, binary_to_term(Bin2)),
    {ok, Acts3, _} = frame({m, ping, {pr, 7}}, P2),
    ?assertEqual([{deliver, ping(), Proxy}], Acts3).

legacy_noproc_dead_is_normal_test() ->
    {ok, _, P1} = frame({m, ping, {pr, 3}}, legacy()),
    {ok, Acts, _} = frame({'DEAD', {pr, 3}, noproc}, P1),
    ?assertEqual([{control, fake(800003), {die, normal}}, {forget_proxy, fake(800003)}], Acts).

heartbeat_is_acknowledged_test() ->
    {ok, [{send, ctrl, Bin}], _} = frame({heartbeat, 5}, extended()),
    ?assertEqual({heartbeat_ack, 5}, binary_to_term(Bin)).

a_feature_not_agreed_is_an_unknown_frame_test() ->
    {ok, [], P1} = frame({heartbeat, 5}, legacy()),
    ?assertMatch(#{errors := 1}, fabric_peer_protocol:info(P1)).

whereis_from_the_peer_exports_the_name_test() ->
    {ok, [{monitor_export, Ping, 1}, {send, ctrl, Bin}], _} = frame({whereis, 4, <<"ping">>}, extended()),
    ?assertEqual(ping(), Ping),
    ?assertEqual({whereis_reply, 4, {pr, 1}}, binary_to_term(Bin)).

whereis_reply_gives_the_caller_a_proxy_test() ->
    From = {self(), make_ref()},
    {[{send, ctrl, Req}], P1} = fabric_peer_protocol:whereis(<<"pong">>, From, extended()),
    ?assertEqual({whereis, 1, <<"pong">>}, binary_to_term(Req)),
    {ok, Acts, _} = frame({whereis_reply, 1, {pr, 12}}, P1),
    ?assertEqual([{monitor_proxy, fake(800012), 12}, {reply, From, fake(800012)}], Acts).

whereis_of_a_legacy_peer_is_not_supported_test() ->
    From = {self(), make_ref()},
    ?assertMatch({[{reply, From, {error, not_supported}}], _},
                 fabric_peer_protocol:whereis(<<"pong">>, From, legacy())).

gen_call_alias_tags_are_replaced_and_restored_test() ->
    {ok, _, P1} = frame({m, ping, {pr, 7}}, extended()),
    Proxy = fake(800007),
    Ref = make_ref(),
    Call = {t, {'$gen_call', {t, {{pr, 7}, [alias | {r, term_to_binary(Ref)}]}}, req}},
    {ok, [{deliver, _, Delivered}], P2} = frame({m, ping, Call}, P1),
    ?assertEqual({'$gen_call', {Proxy, Ref}, req}, Delivered),
    %% the reply sent to the caller's proxy gets its alias tag back
    {[{send, msg, Bin}], _} = fabric_peer_protocol:proxy_msg(Proxy, {Ref, answer}, P2),
    {m, 7, {t, {[alias | {r, _}], answer}}} = binary_to_term(Bin).

%%% sending

a_local_pid_goes_out_as_an_export_test() ->
    Me = self(),
    {ok, [{monitor_export, Me, 1}, {send, msg, Bin}], P1} =
        fabric_peer_protocol:send(ping, {Me}, extended()),
    ?assertEqual({m, ping, {t, {{pr, 1}}}}, binary_to_term(Bin)),
    %% the same pid keeps its id and is monitored once
    {ok, [{send, msg, _}], _} = fabric_peer_protocol:send(ping, Me, P1).

max_exports_refuses_the_message_test() ->
    P0 = extended(#{max_exports => 1}),
    {ok, _, P1} = fabric_peer_protocol:send(ping, self(), P0),
    ?assertMatch({{error, {limit, max_exports}}, [], _},
                 fabric_peer_protocol:send(ping, [self(), fake(5)], P1)).

a_frame_over_the_peer_limit_is_refused_test() ->
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS,
                                                peer_max => 100}, false, false, proto(#{})),
    ?assertMatch({{error, {frame_too_large, _, 100}}, [], _},
                 fabric_peer_protocol:send(ping, crypto:strong_rand_bytes(500), P)).

a_legacy_peer_cannot_get_a_map_test() ->
    ?assertMatch({{error, {unsupported, map}}, [], _},
                 fabric_peer_protocol:send(ping, #{a => 1}, legacy())).

%%% the outbox and sessions

frames_wait_in_the_outbox_until_a_resume_test() ->
    P0 = proto(#{}),
    {ok, [], P1} = fabric_peer_protocol:send(ping, hello, P0),
    ?assertMatch(#{queued := 1}, fabric_peer_protocol:info(P1)),
    {[{send, ctrl, Bin}], P2} = fabric_peer_protocol:established(
                                  #{mode => extended, features => ?FEATS}, false, true, P1),
    ?assertEqual({m, ping, hello}, binary_to_term(Bin)),
    ?assertMatch(#{queued := 0}, fabric_peer_protocol:info(P2)).

the_outbox_is_dropped_without_a_resume_test() ->
    {ok, [], P1} = fabric_peer_protocol:send(ping, hello, proto(#{})),
    ?assertMatch({[], _}, fabric_peer_protocol:established(
                            #{mode => extended, features => ?FEATS}, false, false, P1)).

max_queue_bounds_messages_while_disconnected_test() ->
    ?assertMatch({{error, not_connected}, [], _},
                 fabric_peer_protocol:send(ping, hello, proto(#{max_queue => 0}))),
    {ok, [], P1} = fabric_peer_protocol:send(ping, hello, proto(#{max_queue => 1})),
    ?assertMatch({{error, queue_full}, [], _}, fabric_peer_protocol:send(ping, hello, P1)).

an_exported_process_that_ends_sends_dead_and_it_is_resent_on_resume_test() ->
    Me = self(),
    {ok, _, P1} = fabric_peer_protocol:send(ping, Me, extended()),
    Ref = make_ref(),
    P2 = fabric_peer_protocol:watch_export(Ref, 1, P1),
    {[{send, ctrl, Dead}], P3} = fabric_peer_protocol:down(Ref, Me, crashed, P2),
    ?assertEqual({'DEAD', {pr, 1}, crashed}, binary_to_term(Dead)),
    {_, P4} = fabric_peer_protocol:lost({error, not_connected}, P3),
    ?assertNot(fabric_peer_protocol:connected(P4)),
    {Acts, _} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS},
                                                 false, true, P4),
    ?assertEqual([{send, ctrl, Dead}], Acts).

reset_ends_proxies_and_unwatches_exports_test() ->
    {ok, _, P1} = frame({m, ping, {pr, 7}}, extended()),
    {ok, _, P2} = fabric_peer_protocol:send(ping, self(), P1),
    Ref = make_ref(),
    P3 = fabric_peer_protocol:watch_export(Ref, 1, P2),
    {Acts, P4} = fabric_peer_protocol:reset(P3),
    ?assertEqual([{control, fake(800007), {die, noconnection}}, {forget_proxy, fake(800007)},
                  {demonitor, Ref}], Acts),
    ?assertMatch(#{proxies := 0, exported := 0, next_id := 1}, fabric_peer_protocol:info(P4)).

lost_answers_waiting_whereis_callers_test() ->
    From = {self(), make_ref()},
    {_, P1} = fabric_peer_protocol:whereis(<<"pong">>, From, extended()),
    ?assertMatch({[{reply, From, {error, not_connected}}], _},
                 fabric_peer_protocol:lost({error, not_connected}, P1)).

a_locally_killed_proxy_is_reported_as_exit2_kill_test() ->
    {ok, [{monitor_proxy, Proxy, 7} | _], P1} = frame({m, ping, {pr, 7}}, extended()),
    Ref = make_ref(),
    P2 = fabric_peer_protocol:watch_proxy(Ref, 7, P1),
    {Acts, _} = fabric_peer_protocol:down(Ref, Proxy, killed, P2),
    Sig = fake(900003),
    [{forget_proxy, Proxy}, {monitor_export, Sig, 1}, {send, ctrl, Bin}] = Acts,
    ?assertEqual({exit2, 1, 7, kill}, binary_to_term(Bin)).
