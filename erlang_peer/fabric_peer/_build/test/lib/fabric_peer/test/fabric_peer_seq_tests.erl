%% EUnit tests of fabric_peer_seq: implicit sequence counts, the outbox and its trim by
%% acks, its limits, and the resume range check and replay (docs/protocol.md 11.2-11.5).
-module(fabric_peer_seq_tests).

-include_lib("eunit/include/eunit.hrl").

issue_n(N, S) ->
    lists:foldl(fun(I, Acc) -> fabric_peer_seq:issue(<<I:32>>, {msg, d, I}, Acc) end, S,
                lists:seq(1, N)).

frames_are_numbered_from_one_and_kept_until_acked_test() ->
    S = issue_n(5, fabric_peer_seq:new(100, 1000)),
    ?assertEqual(5, fabric_peer_seq:sent(S)),
    ?assertEqual(5, fabric_peer_seq:outbox_len(S)),
    ?assertEqual(20, fabric_peer_seq:outbox_bytes(S)),
    {ok, S1} = fabric_peer_seq:ack(3, S),
    ?assertEqual(3, fabric_peer_seq:acked(S1)),
    ?assertEqual([{d, 4, false}, {d, 5, false}], fabric_peer_seq:unconfirmed(S1)),
    ?assertEqual(8, fabric_peer_seq:outbox_bytes(S1)).

an_ack_must_advance_and_stay_within_sent_test() ->
    S = issue_n(3, fabric_peer_seq:new(100, 1000)),
    {ok, S1} = fabric_peer_seq:ack(2, S),
    ?assertEqual({error, bad_ack}, fabric_peer_seq:ack(2, S1)),
    ?assertEqual({error, bad_ack}, fabric_peer_seq:ack(1, S1)),
    ?assertEqual({error, bad_ack}, fabric_peer_seq:ack(4, S1)),
    ?assertEqual({error, bad_ack}, fabric_peer_seq:ack(x, S1)),
    ?assertMatch({ok, _}, fabric_peer_seq:ack(3, S1)).

the_outbox_admits_below_both_limits_test() ->
    Empty = fabric_peer_seq:new(2, 10),
    ?assert(fabric_peer_seq:room(Empty)),
    %% an empty outbox admits one frame whatever its size
    Big = fabric_peer_seq:issue(<<0:800>>, ctrl, Empty),
    ?assertNot(fabric_peer_seq:room(Big)),
    Two = issue_n(2, Empty),
    ?assertNot(fabric_peer_seq:room(Two)),
    {ok, One} = fabric_peer_seq:ack(1, Two),
    ?assert(fabric_peer_seq:room(One)).

received_counts_and_acks_owed_test() ->
    S = lists:foldl(fun(_, A) -> fabric_peer_seq:handled(A) end, fabric_peer_seq:new(1, 1),
                    lists:seq(1, 70)),
    ?assertEqual(70, fabric_peer_seq:received(S)),
    ?assertEqual(70, fabric_peer_seq:ack_owed(S)),
    {70, S1} = fabric_peer_seq:ack_written(S),
    ?assertEqual(0, fabric_peer_seq:ack_owed(S1)),
    ?assertEqual(1, fabric_peer_seq:ack_owed(fabric_peer_seq:handled(S1))).

sequenced_by_tag_alone_test_() ->
    [?_assert(fabric_peer_seq:sequenced(T))
     || T <- [{m, 1, x}, {'DEAD', {pr, 1}, normal}, {link, 1, 2}, {exit2, 1, 2, r},
              {mc, 1, 1, x}, {credit, [], 0}, {r, a, b, 1}, {foo}, {m}, undecodable, 42]] ++
    [?_assertNot(fabric_peer_seq:sequenced(T))
     || T <- [{heartbeat, 1}, {heartbeat_ack, 1}, {error, a, b}, {ack, 1}, {ack, x, y},
              {whereis, 1, <<"a">>}, {whereis_reply, 1, undefined}]].

resume_checks_the_range_and_replays_from_the_peers_count_test() ->
    {ok, S} = fabric_peer_seq:ack(2, issue_n(6, fabric_peer_seq:new(100, 1000))),
    %% the outbox holds frames 3..6: the peer may have handled 2..6 of them
    ?assertNot(fabric_peer_seq:check_peer(1, S)),
    ?assertNot(fabric_peer_seq:check_peer(7, S)),
    ?assertNot(fabric_peer_seq:check_peer(undefined, S)),
    [?assert(fabric_peer_seq:check_peer(N, S)) || N <- lists:seq(2, 6)],
    {Replay, S1} = fabric_peer_seq:resume(4, fabric_peer_seq:handled(S)),
    ?assertEqual([<<5:32>>, <<6:32>>], Replay),
    ?assertEqual(4, fabric_peer_seq:acked(S1)),
    %% the count we gave in the handshake counts as an ack written
    ?assertEqual(0, fabric_peer_seq:ack_owed(S1)),
    {[], _} = fabric_peer_seq:resume(6, S1).
