%% EUnit tests of the credit feature (docs/protocol.md 12): the pure counts of
%% fabric_peer_credit, and the established protocol with credit agreed (windows, grants,
%% violations, the returns by mailbox length, a resume, ordering per destination). No
%% socket: mailbox lengths come from a `counters' cell the test sets.
-module(fabric_peer_credit_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"link">>, <<"heartbeat">>, <<"error">>, <<"session">>,
                <<"acks">>, <<"credit">>]).

%%% the pure counts

sender_windows_test() ->
    C0 = fabric_peer_credit:new({100, 1000, 100}, {3, 1000, 2}),
    ?assert(fabric_peer_credit:may_issue(a, C0)),
    C1 = fabric_peer_credit:issue(a, 10, fabric_peer_credit:issue(a, 10, C0)),
    %% the destination's window is used up, not the others'
    ?assertNot(fabric_peer_credit:may_issue(a, C1)),
    ?assert(fabric_peer_credit:may_issue(b, C1)),
    C2 = fabric_peer_credit:issue(b, 10, C1),
    %% the connection's window is used up
    ?assertNot(fabric_peer_credit:may_issue(c, C2)),
    {ok, C3} = fabric_peer_credit:grant([{a, 1}], 10, C2),
    ?assert(fabric_peer_credit:may_issue(a, C3)),
    ?assertMatch(#{credit_out := 2, credit_out_bytes := 20}, fabric_peer_credit:info(C3)).

byte_window_test() ->
    C0 = fabric_peer_credit:new({10, 10, 10}, {10, 100, 10}),
    %% a frame bigger than the window goes alone
    ?assert(fabric_peer_credit:fits(500, C0)),
    C1 = fabric_peer_credit:issue(a, 60, C0),
    ?assert(fabric_peer_credit:fits(40, C1)),
    ?assertNot(fabric_peer_credit:fits(41, C1)).

grant_overflow_is_clamped_test() ->
    C0 = fabric_peer_credit:issue(a, 10, fabric_peer_credit:new({9, 9, 9}, {9, 99, 9})),
    {{overflow, _}, C1} = fabric_peer_credit:grant([{a, 5}], 10, C0),
    ?assertMatch(#{credit_out := 0, credit_out_bytes := 0, credit_out_dests := 0},
                 fabric_peer_credit:info(C1)),
    {{overflow, _}, _} = fabric_peer_credit:grant([{b, 1}], 0, C0),
    {{overflow, _}, _} = fabric_peer_credit:grant([], 11, C0),
    {{overflow, bad_shape}, _} = fabric_peer_credit:grant([{a, 0}], 0, C0),
    {{overflow, bad_shape}, _} = fabric_peer_credit:grant(x, 0, C0),
    {ok, _} = fabric_peer_credit:grant([], 0, C0).

receiver_windows_and_grants_test() ->
    C0 = fabric_peer_credit:new({4, 1000, 2}, {9, 9, 9}),
    {ok, C1} = fabric_peer_credit:receive_frame(a, 10, C0),
    {ok, C2} = fabric_peer_credit:receive_frame(a, 10, C1),
    %% over the per-destination window: counted anyway (it is returned at once)
    {exceeded, C3} = fabric_peer_credit:receive_frame(a, 10, C2),
    ?assertMatch(#{credit_in := 3}, fabric_peer_credit:info(C3)),
    C4 = fabric_peer_credit:return(a, 10, C3, 1),
    %% half of credit_dest (2) rounded up is 1: due at once
    ?assert(fabric_peer_credit:grant_due(64, C4)),
    {{credit, [{a, 1}], 10}, C5} = fabric_peer_credit:take_grant(C4),
    ?assertMatch(#{credit_in := 2, credit_in_bytes := 20, credit_returns := 0},
                 fabric_peer_credit:info(C5)),
    ?assertEqual({none, C5}, fabric_peer_credit:take_grant(C5)),
    %% owed mailboxes return their frames when released
    P = self(),
    C6 = fabric_peer_credit:owe(P, a, 10, C5),
    ?assertEqual([P], fabric_peer_credit:owed(C6)),
    C7 = fabric_peer_credit:release(P, C6),
    ?assertEqual([], fabric_peer_credit:owed(C7)),
    ?assertEqual(1, fabric_peer_credit:returns(C7)).

grant_every_batches_returns_test() ->
    C0 = fabric_peer_credit:new({1000, 1 bsl 30, 1000}, {9, 9, 9}),
    C1 = lists:foldl(fun(I, Acc) -> fabric_peer_credit:return({d, I}, 1, Acc, 1) end, C0,
                     lists:seq(1, 63)),
    ?assertNot(fabric_peer_credit:grant_due(64, C1)),
    ?assert(fabric_peer_credit:grant_due(64, fabric_peer_credit:return(x, 1, C1, 1))).

%%% the protocol with credit agreed

opts(Extra) ->
    {ok, O} = fabric_peer_opts:normalize(server, "secret", maps:merge(#{allowed => [ping, jobs]}, Extra)),
    O.

fake(N) -> fabric_peer_proto_lib:fake(N).

%% The shared env with registered `ping' and `jobs'; `Box': the mailbox length every local
%% process reports.
env(Box) ->
    (fabric_peer_proto_lib:env())#{whereis => fun(ping) -> fake(900001); (jobs) -> fake(900004); (_) -> undefined end,
                                   mailbox => fun(_) -> counters:get(Box, 1) end,
                                   proxies_pending => fun() -> 0 end}.

%% A session with credit: the peer grants `PeerWindows', we grant `Extra''s windows.
credit(PeerWindows, Extra) ->
    Box = counters:new(1, []),
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS,
                                                peer_credit => PeerWindows}, false, false,
                                              fabric_peer_protocol:new(opts(Extra), env(Box))),
    {Box, P}.

frame(Term, P) -> fabric_peer_protocol:frame(term_to_binary(Term), P).

sent(Acts) -> [binary_to_term(B) || {send, _, B} <- Acts].

errors(Acts) -> [C || {write, B} <- Acts, {error, C, _} <- [binary_to_term(B)]].

size_of(T) -> byte_size(fabric_peer_frame:encode_message(extended, false, T)).

send(Dest, Msg, P) ->
    {R, Acts, P1} = fabric_peer_protocol:send(Dest, Msg, {self(), make_ref()}, P),
    {R, sent(Acts), P1}.

a_slow_destination_waits_and_the_others_go_on_test() ->
    {_, P0} = credit({100, 1 bsl 20, 2}, #{}),
    {ok, [{m, ping, a}], P1} = send(ping, a, P0),
    {ok, [{m, ping, b}], P2} = send(ping, b, P1),
    %% ping is out of credit: c and d wait, in order; jobs goes on
    {wait, [], P3} = send(ping, c, P2),
    {wait, [], P4} = send(ping, d, P3),
    {ok, [{m, jobs, x}], P5} = send(jobs, x, P4),
    ?assertMatch(#{pending := 2, credit_out := 3}, fabric_peer_protocol:info(P5)),
    %% a grant for ping lets c and d go, oldest first
    Bytes = size_of({m, ping, a}) + size_of({m, ping, b}),
    {ok, Acts, P6} = frame({credit, [{ping, 2}], Bytes}, P5),
    ?assertEqual([{m, ping, c}, {m, ping, d}], sent(Acts)),
    ?assertEqual(2, length([R || {reply, _, ok} = R <- Acts])),
    ?assertMatch(#{pending := 0, credit_out := 3}, fabric_peer_protocol:info(P6)).

the_connection_window_holds_every_destination_test() ->
    {_, P0} = credit({2, 1 bsl 20, 2}, #{}),
    {ok, _, P1} = send(ping, a, P0),
    {ok, _, P2} = send(jobs, b, P1),
    {wait, [], P3} = send(jobs, c, P2),
    {ok, Acts, _} = frame({credit, [{ping, 1}], size_of({m, ping, a})}, P3),
    ?assertEqual([{m, jobs, c}], sent(Acts)).

the_byte_window_holds_a_frame_back_test() ->
    Big = binary:copy(<<"x">>, 300),
    {_, P0} = credit({100, 400, 100}, #{}),
    {ok, [_], P1} = send(ping, Big, P0),
    {wait, [], P2} = send(ping, Big, P1),
    {ok, Acts, _} = frame({credit, [{ping, 1}], size_of({m, ping, Big})}, P2),
    ?assertEqual([{m, ping, Big}], sent(Acts)).

a_grant_above_what_is_outstanding_is_credit_overflow_test() ->
    {_, P0} = credit({100, 1 bsl 20, 100}, #{}),
    {ok, _, P1} = send(ping, a, P0),
    {ok, Acts, P2} = frame({credit, [{ping, 5}], 0}, P1),
    ?assertEqual([<<"credit_overflow">>], errors(Acts)),
    ?assertMatch(#{credit_out := 0, errors := 1}, fabric_peer_protocol:info(P2)),
    {ok, Bad, _} = frame({credit, nope, 0}, P2),
    ?assertEqual([<<"credit_overflow">>], errors(Bad)).

delivered_messages_are_granted_back_in_batches_test() ->
    {_, P0} = credit({100, 1 bsl 20, 100}, #{grant_every => 4}),
    {ok, A1, P1} = frame({m, ping, 1}, P0),
    %% the first return starts the grant timer
    ?assert(lists:member({grant_timer, 10}, A1)),
    {ok, _, P2} = frame({m, ping, 2}, P1),
    {ok, _, P3} = frame({m, jobs, 3}, P2),
    {ok, A4, P4} = frame({m, ping, 4}, P3),
    Bytes = lists:sum([size_of(T) || T <- [{m, ping, 1}, {m, ping, 2}, {m, jobs, 3}, {m, ping, 4}]]),
    ?assertEqual([{credit, [{jobs, 1}, {ping, 3}], Bytes}], [T || {credit, _, _} = T <- sent(A4)]),
    ?assertMatch(#{credit_in := 0, credit_returns := 0}, fabric_peer_protocol:info(P4)),
    %% the delay passing with nothing returned writes nothing
    {Due, _} = fabric_peer_protocol:grant_due(P4),
    ?assertEqual([], sent(Due)).

a_full_mailbox_is_owed_until_it_has_room_test() ->
    {Box, P0} = credit({100, 1 bsl 20, 100}, #{mailbox_high => 10}),
    counters:put(Box, 1, 50),
    {ok, A1, P1} = frame({m, ping, 1}, P0),
    %% delivered at once, never held back; its credit is not returned yet
    ?assert(lists:member({deliver, fake(900001), 1}, A1)),
    ?assertMatch(#{credit_in := 1, credit_owed := 1, credit_returns := 0}, fabric_peer_protocol:info(P1)),
    {Due1, P2} = fabric_peer_protocol:grant_due(P1),
    ?assertEqual([], sent(Due1)),
    ?assert(lists:member({grant_timer, 10}, Due1)),
    counters:put(Box, 1, 3),
    {Due2, P3} = fabric_peer_protocol:grant_due(P2),
    ?assertEqual([{credit, [{ping, 1}], size_of({m, ping, 1})}], sent(Due2)),
    ?assertMatch(#{credit_in := 0, credit_owed := 0}, fabric_peer_protocol:info(P3)).

a_frame_over_our_window_is_credit_exceeded_test() ->
    {Box, P0} = credit({100, 1 bsl 20, 100}, #{credit_dest => 2, mailbox_high => 10}),
    counters:put(Box, 1, 50),
    {ok, _, P1} = frame({m, ping, 1}, P0),
    {ok, _, P2} = frame({m, ping, 2}, P1),
    {ok, A3, P3} = frame({m, ping, 3}, P2),
    ?assertEqual([<<"credit_exceeded">>], errors(A3)),
    ?assertNot(lists:member({deliver, fake(900001), 3}, A3)),
    %% returned at once (one is half of credit_dest: granted at once)
    ?assert(lists:member({credit, [{ping, 1}], size_of({m, ping, 3})}, sent(A3))),
    %% an mc over the window is answered, not delivered, and returned at once too
    {ok, A4, P4} = frame({mc, 1, ping, 4}, P3),
    ?assert(lists:member({mc_result, 1, {error, <<"credit_exceeded">>}}, sent(A4))),
    ?assert(lists:member({credit, [{ping, 1}], size_of({mc, 1, ping, 4})}, sent(A4))),
    ?assertMatch(#{received := 4}, fabric_peer_protocol:info(P4)).

dropped_and_remote_frames_are_returned_at_once_test() ->
    {_, P0} = credit({100, 1 bsl 20, 100}, #{grant_every => 2, mailbox_high => 10}),
    {ok, _, P1} = frame({m, nobody, 1}, P0),            % not allowed: dropped
    {ok, A2, _} = frame({m, 12345, 2}, P1),             % unknown id: dropped
    ?assertMatch([{credit, [{12345, 1}, {nobody, 1}], _}], [T || {credit, _, _} = T <- sent(A2)]).

credit_survives_a_resume_test() ->
    {_, P0} = credit({100, 1 bsl 20, 1}, #{}),
    {ok, [_], P1} = send(ping, a, P0),
    {wait, [], P2} = send(ping, b, P1),
    {[], P3} = fabric_peer_protocol:lost({error, not_connected}, P2),
    {Replay, P4} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS,
                                                      peer_received => 0,
                                                      peer_credit => {9, 9, 9}}, false, true, P3),
    %% the frame not acknowledged is written again; b still waits for ping's credit (the
    %% windows of the first handshake hold)
    ?assertEqual([{m, ping, a}], sent(Replay)),
    ?assertMatch(#{pending := 1, credit_out := 1}, fabric_peer_protocol:info(P4)),
    {ok, Acts, _} = frame({credit, [{ping, 1}], size_of({m, ping, a})}, P4),
    ?assertEqual([{m, ping, b}], sent(Acts)).

returns_while_disconnected_go_right_after_the_replay_test() ->
    {_, P0} = credit({100, 1 bsl 20, 100}, #{}),
    {ok, _, P1} = frame({m, ping, 1}, P0),
    {_, P2} = fabric_peer_protocol:lost({error, not_connected}, P1),
    {Due, P3} = fabric_peer_protocol:grant_due(P2),
    ?assertEqual([], sent(Due)),
    {Replay, _} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS,
                                                     peer_received => 0}, false, true, P3),
    ?assertEqual([{credit, [{ping, 1}], size_of({m, ping, 1})}], sent(Replay)).

without_credit_agreed_a_credit_frame_is_unknown_test() ->
    Box = counters:new(1, []),
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS -- [<<"credit">>]},
                                              false, false,
                                              fabric_peer_protocol:new(opts(#{}), env(Box))),
    {ok, Acts, _} = frame({credit, [], 0}, P),
    ?assertEqual([<<"unknown_frame">>], errors(Acts)).

a_session_resumes_only_with_the_same_credit_agreement_test() ->
    {_, P0} = credit({100, 1 bsl 20, 100}, #{}),
    ?assertMatch({ok, 0}, fabric_peer_protocol:resumable(?FEATS, 0, P0)),
    ?assertEqual(not_resumable, fabric_peer_protocol:resumable(?FEATS -- [<<"credit">>], 0, P0)).

%% Allowance goes back in batches of 128 messages carried out (one control message per
%% batch); a message waiting for credit is given back once it went.
proxy_messages_give_allowance_back_as_they_go_test() ->
    {_, P0} = credit({1000, 1 bsl 20, 1}, #{}),
    {ok, _, P1} = frame({m, ping, {pr, 7}}, P0),
    Proxy = fake(800007),
    Send = fun(Msgs, P) ->
                   lists:foldl(fun(M, Acc) -> element(2, fabric_peer_protocol:proxy_msg(Proxy, M, Acc)) end,
                               P, Msgs)
           end,
    P2 = Send([a, b], P1),                                           % b waits for credit
    {[], 1, P3} = fabric_peer_protocol:allowances(P2),
    {ok, Acts, P4} = frame({credit, [{7, 1}], size_of({m, 7, a})}, P3),
    ?assertEqual([{m, 7, b}], sent(Acts)),
    {[], 0, P5} = fabric_peer_protocol:allowances(P4),
    %% 125 more and a last one, each granted as it goes: the 128th carried out returns the batch
    P6 = lists:foldl(fun(I, Acc) ->
                             Acc1 = Send([I], Acc),
                             {ok, _, Acc2} = frame({credit, [{7, 1}], size_of({m, 7, I})}, Acc1),
                             Acc2
                     end, P5, lists:seq(1, 125)),
    {[], 1, P7} = fabric_peer_protocol:allowances(Send([last], P6)),
    {ok, _, P8} = frame({credit, [{7, 1}], size_of({m, 7, last})}, P7),
    ?assertMatch({[{control, Proxy, {allow, 128}}], 0, _}, fabric_peer_protocol:allowances(P8)).

%%% routing (docs/protocol.md 16.8): credit crosses the server

release_one_returns_one_routed_frame_test() ->
    C0 = fabric_peer_credit:new({100, 1000, 100}, {9, 9, 9}),
    Owner = {route, self(), {svc, 'c2@h'}},
    C1 = fabric_peer_credit:owe(Owner, {svc, 'c2@h'}, 7, fabric_peer_credit:owe(Owner, {svc, 'c2@h'}, 5, C0)),
    C2 = fabric_peer_credit:release_one(Owner, C1),
    ?assertEqual([Owner], fabric_peer_credit:owed(C2)),
    ?assertEqual(1, fabric_peer_credit:returns(C2)),
    C3 = fabric_peer_credit:release_one(Owner, C2),
    ?assertEqual([], fabric_peer_credit:owed(C3)),
    ?assertMatch({{credit, [{{svc, 'c2@h'}, 2}], 12}, _}, fabric_peer_credit:take_grant(C3)),
    %% nothing owed: nothing happens
    ?assertEqual(C3, fabric_peer_credit:release_one(Owner, C3)).

%% A routing server with credit on the C1 hop: the routed message's credit is owed until
%% C2's connection says it was issued there, or that connection is gone.
routed_credit_waits_for_the_next_hop_test() ->
    Conn = fake(700000),
    Box = counters:new(1, []),
    Alive = counters:new(1, []),
    Env = (env(Box))#{route => fun(<<"c2@h">>) -> {ok, Conn}; (_) -> none end,
                      mailbox => fun(Pid) when Pid =:= Conn ->
                                         case counters:get(Alive, 1) of 0 -> 0; _ -> gone end;
                                    (_) -> counters:get(Box, 1)
                                 end},
    {_, P0} = fabric_peer_protocol:established(#{mode => extended, features => ?FEATS,
                                                 peer_credit => {100, 1 bsl 20, 100}}, false, false,
                                               fabric_peer_protocol:new(opts(#{routing => true}), Env)),
    Dest = {svc, 'c2@h'},
    {ok, Acts, P1} = frame({m, Dest, x}, P0),
    ?assertEqual([{route, {msg, Conn, svc, x, Dest}}], [A || {route, _} = A <- Acts]),
    ?assertMatch(#{credit_owed := 1, credit_returns := 0, credit_in := 1},
                 fabric_peer_protocol:info(P1)),
    %% the grant delay passes: C2's connection lives, the credit stays owed
    {_, P2} = fabric_peer_protocol:grant_due(P1),
    ?assertMatch(#{credit_owed := 1, credit_returns := 0}, fabric_peer_protocol:info(P2)),
    %% issued on the S-C2 hop: returned
    P3 = fabric_peer_flowctl:issued({route, Conn, Dest}, P2),
    ?assertMatch(#{credit_owed := 0, credit_returns := 1}, fabric_peer_protocol:info(P3)),
    %% another one, and C2's connection ends before issuing it: returned at the next check
    {ok, _, P4} = frame({m, Dest, y}, P3),
    ?assertMatch(#{credit_owed := 1}, fabric_peer_protocol:info(P4)),
    counters:put(Alive, 1, 1),
    {_, P5} = fabric_peer_protocol:grant_due(P4),
    ?assertMatch(#{credit_owed := 0, credit_in := 0}, fabric_peer_protocol:info(P5)).

%% The S-C2 hop: a message routed here waits for credit without a timeout, and the
%% connection that routed it is told once it is issued.
a_relayed_message_waits_without_timeout_and_is_acknowledged_test() ->
    {_, P0} = credit({100, 1 bsl 20, 1}, #{}),
    Notify = {self(), {fabric_route, issued, tag}},
    {ok, [{m, ping, a}], P1} = relay(ping, a, Notify, P0),
    {wait, [], P2} = relay(ping, b, Notify, P1),
    {[], P3} = fabric_peer_protocol:expire(erlang:monotonic_time(millisecond) + 3600000, P2),
    ?assertMatch(#{pending := 1}, fabric_peer_protocol:info(P3)),
    {ok, Acts, P4} = frame({credit, [{ping, 1}], size_of({m, ping, a})}, P3),
    ?assertEqual([{m, ping, b}], sent(Acts)),
    ?assertEqual([{reply, Notify, ok}], [R || {reply, _, _} = R <- Acts]),
    ?assertMatch(#{pending := 0}, fabric_peer_protocol:info(P4)).

relay(Dest, Msg, Notify, P) ->
    {R, Acts, P1} = fabric_peer_protocol:send(Dest, Msg, {relay, Notify}, P),
    {R, sent(Acts), P1}.

%% A grant for a {Name, Node} whose node came as a binary (no atom at the receiver) names
%% the node as an atom on the wire.
grant_for_a_binary_node_is_an_atom_on_the_wire_test() ->
    Bin = fabric_peer_frame:encode_plain({credit, [{{svc, <<"c2@h">>}, 2}, {ping, 1}, {7, 3}], 12}),
    ?assertEqual({credit, [{{svc, 'c2@h'}, 2}, {ping, 1}, {7, 3}], 12}, binary_to_term(Bin)),
    ?assertEqual(term_to_binary({credit, [{ping, 1}], 0}),
                 fabric_peer_frame:encode_plain({credit, [{ping, 1}], 0})).
