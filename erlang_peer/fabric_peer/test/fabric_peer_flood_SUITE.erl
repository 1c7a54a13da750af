%% Flow control between two erlang_peer ends (docs/protocol.md 12): a sender far faster
%% than a slow receiver (which reads one message per millisecond) is slowed down by
%% credit; the receiver's mailbox stays within the documented bound (`mailbox_high +
%% credit_dest' from one connection, 12.3); nothing is dropped silently: beyond
%% `max_pending_messages' the messages of `!' are counted and reported, and a blocked
%% `send/2' times out with nothing sent. Bounded in count (a few thousand messages) and
%% time.
-module(fabric_peer_flood_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

all() -> [a_fast_bang_sender_is_slowed_and_the_mailbox_bounded,
          a_fast_send_sender_blocks_and_the_mailbox_is_bounded,
          a_slow_destination_does_not_block_the_others,
          overflow_beyond_max_pending_is_counted_and_reported,
          a_blocked_send_times_out_and_sends_nothing,
          the_server_side_is_slowed_too, closing_reports_what_waited_in_the_proxy].

suite() -> [{timetrap, {minutes, 5}}].

%% The windows the server grants its clients (small, so that a test is short).
-define(WINDOWS, #{credit_window => 400, credit_dest => 100, mailbox_high => 50}).
-define(BOUND, 150).                          % mailbox_high + credit_dest

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    Config.

end_per_suite(Config) -> Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    {ok, S} = fabric_peer:start_server(0, "secret", ?WINDOWS),
    [{server, S} | Config].

end_per_testcase(_, Config) ->
    fabric_peer:stop_server(?config(server, Config)),
    Config.

connect(Config, Opts) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(?config(server, Config)),
                                  "secret", Opts),
    C.

%% A receiver reading one message per `Ms' milliseconds, keeping the longest mailbox it
%% saw and the numbers of stream `Tag' in order (anomalies kept).
slow(Ms) -> slow(Ms, #{max => 0, n => 0, bad => [], last => #{}}).
slow(Ms, St) ->
    receive
        {report, From} -> From ! {slow, self(), St}, slow(Ms, St);
        {go, Ms1} -> slow(Ms1, St);
        {Tag, I} ->
            {message_queue_len, L} = process_info(self(), message_queue_len),
            Last = maps:get(Tag, maps:get(last, St), 0),
            Bad = case I =:= Last + 1 of
                      true -> maps:get(bad, St);
                      false -> [{Tag, Last, I} | maps:get(bad, St)]
                  end,
            St1 = St#{max := max(L + 1, maps:get(max, St)), n := maps:get(n, St) + 1,
                      bad := Bad, last := (maps:get(last, St))#{Tag => I}},
            pause(Ms, St1)
    end.

%% Between two messages: `go' and `report' are answered at once (selectively, ahead of
%% the messages waiting).
pause(0, St) -> slow(0, St);
pause(Ms, St) ->
    receive
        {go, Ms1} -> slow(Ms1, St);
        {report, From} -> From ! {slow, self(), St}, pause(Ms, St)
    after Ms -> slow(Ms, St)
    end.

report(Pid) ->
    Pid ! {report, self()},
    receive {slow, Pid, St} -> St after 5000 -> ct:fail(receiver_silent) end.

slow_receiver(Config, Ms) ->
    Pid = spawn(fun() -> slow(Ms) end),
    Name = fabric_peer_test_lib:unique_name("slow"),
    true = register(Name, Pid),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    {Name, Pid}.

wait_count(Pid, N) ->
    true = fabric_peer_test_lib:wait_until(fun() -> maps:get(n, report(Pid)) >= N end, 1000),
    report(Pid).

%%% cases

a_fast_bang_sender_is_slowed_and_the_mailbox_bounded(Config) ->
    N = 3000,
    {Name, Pid} = slow_receiver(Config, 1),
    C = connect(Config, #{}),
    P = fabric_peer:whereis(C, Name),
    T0 = erlang:monotonic_time(millisecond),
    [P ! {bang, I} || I <- lists:seq(1, N)],
    Sent = erlang:monotonic_time(millisecond) - T0,
    %% the sender is held back: the messages wait at the sender (in the proxy and the
    %% connection), credit to the destination is used up
    #{credit_out_dests := 1, credit_out := Out} = fabric_peer:info(C),
    true = Out =< 100,
    St = wait_count(Pid, N),
    ct:pal("~b messages of ! sent in ~b ms; the receiver's longest mailbox ~b (bound ~b)",
           [N, Sent, maps:get(max, St), ?BOUND]),
    [] = maps:get(bad, St),
    true = maps:get(max, St) =< ?BOUND,
    #{dropped_overflow := 0} = fabric_peer:info(C),
    fabric_peer:close(C).

a_fast_send_sender_blocks_and_the_mailbox_is_bounded(Config) ->
    N = 2000,
    {Name, Pid} = slow_receiver(Config, 1),
    C = connect(Config, #{}),
    P = fabric_peer:whereis(C, Name),
    [ok = fabric_peer:send(P, {send, I}) || I <- lists:seq(1, N)],
    %% send/2 returned only once its frame was issued: with the receiver this slow, the
    %% last one needed credit the receiver returned after reading
    St0 = report(Pid),
    true = maps:get(n, St0) >= N - 100 - ?BOUND,
    St = wait_count(Pid, N),
    [] = maps:get(bad, St),
    true = maps:get(max, St) =< ?BOUND,
    fabric_peer:close(C).

a_slow_destination_does_not_block_the_others(Config) ->
    {Stuck, StuckPid} = slow_receiver(Config, 1),
    StuckPid ! {go, 1000000},                   % reads one message, then sleeps
    {Fast, FastPid} = slow_receiver(Config, 0),
    C = connect(Config, #{}),
    PS = fabric_peer:whereis(C, Stuck),
    PF = fabric_peer:whereis(C, Fast),
    [PS ! {stuck, I} || I <- lists:seq(1, 500)],
    [ok = fabric_peer:send(PF, {fast, I}) || I <- lists:seq(1, 2000)],
    St = wait_count(FastPid, 2000),
    [] = maps:get(bad, St),
    %% the stuck one got at most its bound, the rest waits at the sender
    {message_queue_len, L} = process_info(StuckPid, message_queue_len),
    true = L =< ?BOUND,
    #{pending := Pending} = fabric_peer:info(C),
    ct:pal("stuck receiver's mailbox ~b; waiting at the sender's connection ~b", [L, Pending]),
    exit(StuckPid, kill),
    fabric_peer:close(C).

overflow_beyond_max_pending_is_counted_and_reported(Config) ->
    {Name, Pid} = slow_receiver(Config, 1),
    Pid ! {go, 1000000},
    C = connect(Config, #{max_pending_messages => 300}),
    P = fabric_peer:whereis(C, Name),
    N = 2000,
    [P ! {bang, I} || I <- lists:seq(1, N)],
    true = fabric_peer_test_lib:wait_until(
             fun() -> maps:get(dropped_overflow, fabric_peer:info(C)) > 0 end),
    Dropped = collect_overflow(N, []),
    #{dropped_overflow := Counted} = fabric_peer:info(C),
    ct:pal("~b dropped (counted ~b)", [length(Dropped), Counted]),
    true = length(Dropped) =:= Counted,
    [] = [D || #{dest := D} <- Dropped, D =/= P],
    [] = [x || #{state := S} <- Dropped, S =/= unsent],
    %% what was not dropped arrives, in order: nothing is lost silently
    Pid ! {go, 0},
    St = wait_count(Pid, N - Counted),
    %% gaps where messages were dropped, never a duplicate or a reordering
    [] = [B || {_, Last, I} = B <- maps:get(bad, St), I =< Last],
    Got = maps:get(n, St),
    N = Got + Counted,
    DroppedNums = lists:sort([I || #{msg := {bang, I}} <- Dropped]),
    Counted = length(DroppedNums),
    fabric_peer:close(C).

%% Overflow reports to the owner until `Expected' messages are accounted for.
collect_overflow(Expected, Acc) ->
    receive
        {fabric_undelivered, _, #{reason := overflow, messages := Ms}} ->
            collect_overflow(Expected, Acc ++ Ms)
    after 2000 -> Acc
    end.

a_blocked_send_times_out_and_sends_nothing(Config) ->
    {Name, Pid} = slow_receiver(Config, 1),
    Pid ! {go, 1000000},
    C = connect(Config, #{send_timeout => 300}),
    P = fabric_peer:whereis(C, Name),
    {Oks, Timeouts} = send_until_timeouts(P, 1, 0, 0),
    ct:pal("~b ok, ~b timed out", [Oks, Timeouts]),
    true = Oks >= 100,
    Pid ! {go, 0},
    timer:sleep(500),
    %% what timed out was never sent
    St = report(Pid),
    Oks = maps:get(n, St),
    fabric_peer:close(C).

%% send/2 until two have timed out (at most 1000 sends).
send_until_timeouts(_, I, Oks, 2) when I < 1000 -> {Oks, 2};
send_until_timeouts(P, I, Oks, T) when I < 1000 ->
    case fabric_peer:send(P, {send, I}) of
        ok -> send_until_timeouts(P, I + 1, Oks + 1, T);
        {error, timeout} -> send_until_timeouts(P, I + 1, Oks, T + 1)
    end.

the_server_side_is_slowed_too(Config) ->
    %% the client grants the server small windows; a slow process at the client
    N = 1500,
    Collector = spawn(fun() -> slow(1) end),
    Name = fabric_peer_test_lib:unique_name("client_slow"),
    true = register(Name, Collector),
    Echo = fabric_peer_test_lib:unique_name("starter"),
    Me = self(),
    true = register(Echo, spawn(fun() -> receive {go, To} -> Me ! {flood, To} end end)),
    ok = fabric_peer:allow(?config(server, Config), [Echo]),
    C = connect(Config, maps:merge(?WINDOWS, #{allowed => [Name]})),
    E = fabric_peer:whereis(C, Echo),
    E ! {go, Collector},
    To = receive {flood, T} -> T after 5000 -> ct:fail(no_proxy) end,
    true = fabric_peer:is_proxy(To),
    [To ! {srv, I} || I <- lists:seq(1, N)],
    St = wait_count(Collector, N),
    [] = maps:get(bad, St),
    true = maps:get(max, St) =< ?BOUND,
    fabric_peer:close(C).

%% Messages of `!' still waiting (in the connection and in the proxy, beyond its
%% allowance) when the connection is closed are reported, never lost silently.
closing_reports_what_waited_in_the_proxy(Config) ->
    {Name, Pid} = slow_receiver(Config, 1),
    Pid ! {go, 1000000},
    C = connect(Config, #{}),
    P = fabric_peer:whereis(C, Name),
    N = 2000,
    [P ! {bang, I} || I <- lists:seq(1, N)],
    true = fabric_peer_test_lib:wait_until(
             fun() -> maps:get(pending, fabric_peer:info(C)) > 0 end),
    ok = fabric_peer:close(C),
    Reported = collect_reports([]),
    Unsent = [I || #{state := unsent, msg := {bang, I}} <- Reported],
    Unconfirmed = [I || #{state := unconfirmed, msg := {bang, I}} <- Reported],
    {message_queue_len, InBox} = process_info(Pid, message_queue_len),
    Delivered = InBox + 1,                      % it read one, then sleeps
    ct:pal("delivered ~b, reported unsent ~b, unconfirmed ~b", [Delivered, length(Unsent),
                                                                length(Unconfirmed)]),
    true = length(Unsent) > 512,                % some of them waited in the proxy
    true = Delivered + length(Unsent) + length(Unconfirmed) >= N,
    true = Delivered + length(Unsent) =< N,
    %% each reported once, in order
    Unsent = lists:usort(Unsent),
    exit(Pid, kill).

collect_reports(Acc) ->
    receive
        {fabric_undelivered, _, #{messages := Ms}} -> collect_reports(Acc ++ Ms)
    after 3000 -> Acc
    end.
