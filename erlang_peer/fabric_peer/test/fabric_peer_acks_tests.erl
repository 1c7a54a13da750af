%% EUnit tests of the acks feature in the established protocol (fabric_peer_acks through
%% fabric_peer_protocol): counting, batched acks, the outbox limit and the commands that
%% wait for it, the replay on resume, and the report when a session ends. No socket.
-module(fabric_peer_acks_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"link">>, <<"heartbeat">>, <<"error">>, <<"session">>,
                <<"acks">>]).

opts(Extra) ->
    {ok, O} = fabric_peer_opts:normalize(server, "secret", maps:merge(#{allowed => [ping]}, Extra)),
    O.

fake(N) -> fabric_peer_proto_lib:fake(N).

%% the shared env, with a registered `ping'
env() -> (fabric_peer_proto_lib:env())#{whereis => fun(ping) -> fake(900001); (_) -> undefined end}.

acks(Extra) ->
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS}, false, false,
                                              fabric_peer_protocol:new(opts(Extra), env())),
    P.

frame(Term, P) -> fabric_peer_protocol:frame(term_to_binary(Term), P).

sent(Acts) -> [binary_to_term(B) || {send, _, B} <- Acts].

send_n(N, P) ->
    lists:foldl(fun(I, Acc) -> {ok, _, Acc1} = fabric_peer_protocol:send(ping, I, Acc), Acc1 end,
                P, lists:seq(1, N)).

handled_n(N, P) ->
    lists:foldl(fun(I, {As, Acc}) -> {ok, A, Acc1} = frame({m, ping, I}, Acc), {As ++ A, Acc1} end,
                {[], P}, lists:seq(1, N)).

%%% negotiation

without_acks_agreed_nothing_is_counted_test() ->
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS -- [<<"acks">>]},
                                              false, false, fabric_peer_protocol:new(opts(#{}), env())),
    {ok, Acts, P1} = frame({m, ping, 1}, P),
    ?assertEqual([{deliver, fake(900001), 1}], Acts),
    ?assertNot(is_map_key(received, fabric_peer_protocol:info(P1))),
    %% an ack frame is not known without the feature
    {ok, A2, _} = frame({ack, 1}, P1),
    ?assertMatch([{write, _}], A2).

%%% the receiver: counts and acks

the_first_frame_starts_the_ack_timer_and_64_write_an_ack_test() ->
    {Acts1, P1} = handled_n(1, acks(#{})),
    ?assert(lists:member({ack_timer, 10}, Acts1)),
    {Acts, P2} = handled_n(63, P1),
    ?assertEqual([{ack, 64}], sent(Acts)),
    ?assertMatch(#{received := 64}, fabric_peer_protocol:info(P2)),
    %% nothing owed: the delay passing writes nothing
    ?assertMatch({[], _}, fabric_peer_protocol:ack_due(P2)),
    {_, P3} = handled_n(2, P2),
    {Due, _} = fabric_peer_protocol:ack_due(P3),
    ?assertEqual([{ack, 66}], sent(Due)).

unsequenced_frames_are_not_counted_but_dropped_ones_are_test() ->
    P0 = acks(#{}),
    {ok, _, P1} = frame({heartbeat, 1}, P0),
    {ok, _, P2} = frame({whereis_reply, 99, undefined}, P1),
    ?assertMatch(#{received := 0}, fabric_peer_protocol:info(P2)),
    {ok, _, P3} = frame({m, 12345, x}, P2),                  % unknown id: dropped, counted
    {ok, _, P4} = fabric_peer_protocol:frame(<<131, 0>>, P3), % undecodable: counted
    ?assertMatch(#{received := 2}, fabric_peer_protocol:info(P4)).

%%% the sender: outbox and acks

acks_trim_the_outbox_and_bad_acks_are_errors_test() ->
    P1 = send_n(3, acks(#{})),
    ?assertMatch(#{sent := 3, outbox := 3}, fabric_peer_protocol:info(P1)),
    {ok, [], P2} = frame({ack, 2}, P1),
    ?assertMatch(#{acked := 2, outbox := 1}, fabric_peer_protocol:info(P2)),
    {ok, Bad, P3} = frame({ack, 2}, P2),
    ?assertMatch([{error, <<"bad_ack">>, _}], [binary_to_term(B) || {write, B} <- Bad]),
    {ok, Bad2, _} = frame({ack, 9}, P3),
    ?assertMatch([{error, <<"bad_ack">>, _}], [binary_to_term(B) || {write, B} <- Bad2]).

a_full_outbox_makes_sends_wait_in_order_until_an_ack_test() ->
    P1 = send_n(2, acks(#{outbox_frames => 2})),
    From = {self(), make_ref()},
    {wait, [{send_timer, 5000}], P2} = fabric_peer_protocol:send(ping, third, From, P1),
    %% a later command waits behind it, even to another destination
    {ok, _, P3} = frame({m, ping, {pr, 7}}, P2),
    {[], P4} = fabric_peer_protocol:proxy_msg(fake(800007), fourth, P3),
    ?assertMatch(#{pending := 2}, fabric_peer_protocol:info(P4)),
    {ok, Acts, P5} = frame({ack, 2}, P4),
    ?assertEqual([{m, ping, third}, {m, 7, fourth}], sent(Acts)),
    ?assert(lists:member({reply, From, ok}, Acts)),
    ?assertMatch(#{pending := 0, outbox := 2}, fabric_peer_protocol:info(P5)).

a_waiting_send_times_out_and_nothing_is_sent_test() ->
    P1 = send_n(1, acks(#{outbox_frames => 1, send_timeout => 100})),
    From = {self(), make_ref()},
    {wait, _, P2} = fabric_peer_protocol:send(ping, late, From, P1),
    Now = erlang:monotonic_time(millisecond),
    ?assertMatch({[], _}, fabric_peer_protocol:expire(Now, P2)),
    {Acts, P3} = fabric_peer_protocol:expire(Now + 200, P2),
    ?assertEqual([{reply, From, {error, timeout}}], Acts),
    {ok, After, _} = frame({ack, 1}, P3),
    ?assertEqual([], sent(After)).

beyond_max_pending_bang_drops_are_counted_and_reported_test() ->
    {ok, _, P0} = frame({m, ping, {pr, 7}}, acks(#{outbox_frames => 1, max_pending_messages => 1})),
    Proxy = fake(800007),
    {_, P1} = fabric_peer_protocol:proxy_msg(Proxy, a, P0),       % issued
    {_, P2} = fabric_peer_protocol:proxy_msg(Proxy, b, P1),       % waits
    {_, P3} = fabric_peer_protocol:proxy_msg(Proxy, c, P2),       % dropped
    ?assertMatch(#{dropped_overflow := 1, pending := 1}, fabric_peer_protocol:info(P3)),
    {ok, Acts, _} = frame({ack, 1}, P3),
    ?assertEqual([{m, 7, b}], sent(Acts)),
    ?assertMatch([{undelivered, overflow, [#{dest := Proxy, msg := c, state := unsent}]}],
                 [A || {undelivered, _, _} = A <- Acts]),
    From = {self(), make_ref()},
    {_, P4} = fabric_peer_protocol:proxy_msg(Proxy, d, P3),
    ?assertMatch({{error, overflow}, [], _}, fabric_peer_protocol:send(ping, e, From, P4)).

%%% resume and the end of a session

a_resume_replays_from_the_peers_count_test() ->
    P1 = send_n(5, acks(#{})),
    {ok, _, P2} = frame({ack, 1}, P1),
    {_, P3} = handled_n(3, P2),
    {_, P4} = fabric_peer_protocol:lost({error, not_connected}, P3),
    %% written while disconnected: numbered, kept, not written
    {ok, [], P5} = fabric_peer_protocol:send(ping, 6, P4),
    ?assertEqual({ok, 3}, fabric_peer_protocol:resumable(?FEATS, 2, P5)),
    ?assertEqual(not_resumable, fabric_peer_protocol:resumable(?FEATS, 0, P5)),
    ?assertEqual(not_resumable, fabric_peer_protocol:resumable(?FEATS, 7, P5)),
    ?assertEqual(not_resumable, fabric_peer_protocol:resumable(?FEATS -- [<<"acks">>], 2, P5)),
    {Acts, P6} = fabric_peer_protocol:established(
                   #{mode => extended, features => ?FEATS, peer_received => 2}, false, true, P5),
    ?assertEqual([{m, ping, 3}, {m, ping, 4}, {m, ping, 5}, {m, ping, 6}], sent(Acts)),
    ?assertMatch(#{acked := 2, sent := 6, received := 3}, fabric_peer_protocol:info(P6)),
    %% the 256-DEAD resend of a session without acks does not happen
    ?assertEqual([], [T || {'DEAD', _, _} = T <- sent(Acts)]).

the_client_checks_the_servers_count_test() ->
    P1 = send_n(4, acks(#{})),
    {ok, _, P2} = frame({ack, 2}, P1),
    ?assert(fabric_peer_protocol:resume_ok(#{features => ?FEATS, peer_received => 2}, P2)),
    ?assert(fabric_peer_protocol:resume_ok(#{features => ?FEATS, peer_received => 4}, P2)),
    ?assertNot(fabric_peer_protocol:resume_ok(#{features => ?FEATS, peer_received => 1}, P2)),
    ?assertNot(fabric_peer_protocol:resume_ok(#{features => ?FEATS, peer_received => 5}, P2)),
    ?assertNot(fabric_peer_protocol:resume_ok(#{features => ?FEATS}, P2)).

the_end_of_a_session_reports_unconfirmed_and_unsent_messages_test() ->
    P1 = send_n(3, acks(#{outbox_frames => 3})),
    {ok, _, P2} = frame({ack, 1}, P1),
    From = {self(), make_ref()},
    {ok, _, P3} = fabric_peer_protocol:send(ping, 4, P2),
    {wait, _, P4} = fabric_peer_protocol:send(ping, 5, From, P3),
    {Acts, _} = fabric_peer_protocol:reset(session_expired, P4),
    [{undelivered, session_expired, Items}] = [A || {undelivered, _, _} = A <- Acts],
    ?assertEqual([{ping, 2, unconfirmed}, {ping, 3, unconfirmed}, {ping, 4, unconfirmed},
                  {ping, 5, unsent}],
                 [{D, M, S} || #{dest := D, msg := M, state := S, confirmed := false} <- Items]),
    ?assert(lists:member({reply, From, {error, session_expired}}, Acts)).

a_clean_close_waits_for_the_acks_test() ->
    P1 = send_n(2, acks(#{})),
    From = {self(), make_ref()},
    {[], P2} = fabric_peer_protocol:flush(From, P1),
    {ok, Acts, P3} = frame({ack, 2}, P2),
    ?assertEqual([{reply, From, ok}], Acts),
    ?assertEqual([], [A || {undelivered, _, _} = A <- fabric_peer_protocol:terminate(P3)]).

the_peers_not_resumable_error_ends_the_session_test() ->
    P1 = send_n(1, acks(#{})),
    {close, _, P2} = frame({error, <<"not_resumable">>, <<"x">>}, P1),
    ?assertMatch([{undelivered, not_resumable, [_]}],
                 [A || {undelivered, _, _} = A <- fabric_peer_protocol:terminate(P2)]).

%%% confirmed sends (11.8)

a_confirmed_send_waits_for_its_result_test() ->
    From = {self(), make_ref()},
    {wait, Acts, P1} = fabric_peer_protocol:send_confirmed(ping, hi, From, acks(#{})),
    [{mc, Ref, ping, hi}] = sent(Acts),
    {ok, Done, P2} = frame({mc_result, Ref, ok}, P1),
    ?assertEqual([{reply, From, ok}], [A || {reply, _, _} = A <- Done]),
    %% a result for a Ref not pending is unknown_frame
    {ok, Again, _} = frame({mc_result, Ref, ok}, P2),
    ?assertMatch([{error, <<"unknown_frame">>, _}], [binary_to_term(B) || {write, B} <- Again]),
    From2 = {self(), make_ref()},
    {wait, Acts2, P3} = fabric_peer_protocol:send_confirmed(ping, hi, From2, P2),
    [{mc, Ref2, ping, hi}] = sent(Acts2),
    {ok, Refused, _} = frame({mc_result, Ref2, {error, <<"noproc">>}}, P3),
    ?assertEqual([{reply, From2, {error, noproc}}], [A || {reply, _, _} = A <- Refused]).

a_confirmed_send_needs_acks_test() ->
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS -- [<<"acks">>]},
                                              false, false, fabric_peer_protocol:new(opts(#{}), env())),
    ?assertMatch({{error, not_supported}, [], _},
                 fabric_peer_protocol:send_confirmed(ping, hi, {self(), make_ref()}, P)).

the_receiver_answers_every_mc_test() ->
    P0 = acks(#{}),
    {ok, A1, P1} = frame({mc, 1, ping, hello}, P0),
    ?assertEqual([{deliver, fake(900001), hello}, {mc_result, 1, ok}],
                 [A || {deliver, _, _} = A <- A1] ++ sent(A1)),
    {ok, A2, P2} = frame({mc, 2, nobody, hello}, P1),            % not allowed: no error frame
    ?assertEqual([{mc_result, 2, {error, <<"not_allowed">>}}], sent(A2)),
    ?assertEqual([], [W || {write, W} <- A2]),
    {ok, A3, P3} = frame({mc, 3, 4242, hello}, P2),
    ?assertEqual([{mc_result, 3, {error, <<"unknown_id">>}}], sent(A3)),
    ?assertMatch(#{errors := 2, received := 3}, fabric_peer_protocol:info(P3)).

a_session_end_fails_pending_confirmed_sends_test() ->
    From = {self(), make_ref()},
    {wait, _, P1} = fabric_peer_protocol:send_confirmed(ping, hi, From, acks(#{})),
    {Acts, _} = fabric_peer_protocol:reset(session_expired, P1),
    ?assert(lists:member({reply, From, {error, session_expired}}, Acts)),
    [{undelivered, session_expired, [#{msg := hi, confirmed := true, state := unconfirmed}]}] =
        [A || {undelivered, _, _} = A <- Acts].
