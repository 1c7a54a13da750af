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
          the_server_side_is_slowed_too, closing_reports_what_waited_in_the_proxy,
          a_routed_flood_holds_c1_back_and_the_router_bounded].

suite() -> [{timetrap, {minutes, 5}}].

%% The windows the server grants its clients (small, so that a test is short).
-define(WINDOWS, #{credit_window => 400, credit_dest => 100, mailbox_high => 50}).
-define(BOUND, 150).                          % mailbox_high + credit_dest

init_per_suite(Config) -> fabric_peer_test_lib:init_suite(Config).

end_per_suite(Config) -> Config.

init_per_testcase(Case, Config) ->
    fabric_peer_test_lib:flush(),
    Routing = Case =:= a_routed_flood_holds_c1_back_and_the_router_bounded,
    fabric_peer_test_lib:start_server("secret", ?WINDOWS#{routing => Routing}, Config).

end_per_testcase(_, Config) -> fabric_peer_test_lib:stop_server(Config).

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
    %% connection), credit to the destination is used up (once the proxy has forwarded the
    %% first of them to the connection: under load that is a moment after the bangs)
    true = fabric_peer_test_lib:wait_until(
             fun() -> maps:get(credit_out_dests, fabric_peer:info(C)) =:= 1 end),
    #{credit_out := Out} = fabric_peer:info(C),
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
    %% every message is accounted for: dropped, waiting (in the connection or in the
    %% proxy's mailbox) or delivered (the receiver read one, the rest waits in its mailbox)
    true = fabric_peer_test_lib:wait_until(fun() -> accounted(C, P, Pid) =:= N end, 300),
    #{dropped_overflow := Counted} = fabric_peer:info(C),
    true = Counted > 0,
    %% and every drop is reported while the destination stays stuck (a report does not
    %% wait for the overflow to end, docs/protocol.md 12.6)
    Dropped = collect_overflow(Counted, []),
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

%% Overflow reports to the owner until `Expected' messages are reported (then a short
%% look for any extra one); what came if a report is missing for 10 s.
collect_overflow(Expected, Acc) when length(Acc) >= Expected ->
    receive
        {fabric_undelivered, _, #{reason := overflow, messages := Ms}} -> Acc ++ Ms
    after 200 -> Acc
    end;
collect_overflow(Expected, Acc) ->
    receive
        {fabric_undelivered, _, #{reason := overflow, messages := Ms}} ->
            collect_overflow(Expected, Acc ++ Ms)
    after 10000 -> Acc
    end.

%% Messages sent through proxy `P' of connection `C' to the receiver `Pid' that are
%% dropped, waiting at the sender or delivered (each counted once: one on its way between
%% two of these places is not counted, so the sum is N only when all are settled).
accounted(C, P, Pid) ->
    #{dropped_overflow := Dropped, pending := Pending} = fabric_peer:info(C),
    {messages, Queued} = process_info(P, messages),
    InProxy = length([x || {bang, _} <- Queued]),
    #{n := Read} = report(Pid),
    {message_queue_len, InBox} = process_info(Pid, message_queue_len),
    Dropped + Pending + InProxy + Read + InBox.

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

%% C1 -> S -> C2 (docs/protocol.md 16.8): C1 floods a slow process of client C2 by
%% `{Name, C2Node}'. S returns C1's credit only once it issued each message on the S-C2
%% hop (which needs C2's credit), so C1 is held back by the slow process: C1 uses up its
%% window to that destination, what S holds for C2 stays within the window S granted C1
%% for it (credit_dest), and every message arrives, in order.
a_routed_flood_holds_c1_back_and_the_router_bounded(Config) ->
    N = 2000,
    Senders = 2,
    Collector = spawn(fun() -> slow(1) end),
    Name = fabric_peer_test_lib:unique_name("routed_slow"),
    true = register(Name, Collector),
    N2 = list_to_atom("c2_" ++ integer_to_list(erlang:unique_integer([positive])) ++ "@127.0.0.1"),
    N1 = list_to_atom("c1_" ++ integer_to_list(erlang:unique_integer([positive])) ++ "@127.0.0.1"),
    %% C2 grants S the small windows too: its slow process holds S back
    C2 = connect(Config, ?WINDOWS#{node => N2, allowed => [Name]}),
    C1 = connect(Config, #{node => N1}),
    Me = self(),
    %% each sender streams its own numbers (tags s1, s2) with blocking send/2
    Flooders = [spawn_link(fun() ->
                                   Tag = list_to_atom("s" ++ integer_to_list(K)),
                                   Rs = [fabric_peer:send({C1, {Name, N2}}, {Tag, I})
                                         || I <- lists:seq(1, N)],
                                   Me ! {flooded, self(), lists:usort(Rs)}
                           end) || K <- lists:seq(1, Senders)],
    Sample = sample(C1, N2, Flooders, #{held => 0, mem => 0, c1_out => 0, c1_pending => 0}),
    ct:pal("routed flood of ~b x ~b: ~0p", [Senders, N, Sample]),
    St = wait_count_long(Collector, Senders * N),
    [] = maps:get(bad, St),
    #{s1 := N, s2 := N} = maps:get(last, St),
    %% the slow process got at most its own bound from S (C2's windows)
    true = maps:get(max, St) =< ?BOUND,
    %% C1 was held back: its credit to the destination ran out (the senders waited)
    true = maps:get(c1_out, Sample) >= 100,
    %% S held for C2 at most what C1's window to that destination allows (credit_dest: 100,
    %% plus a few other messages in that connection's mailbox), never the flood
    true = maps:get(held, Sample) =< 100 + 10,
    #{dropped_overflow := 0, local_errors := 0} = fabric_peer:info(C1),
    exit(Collector, kill),
    fabric_peer:close(C1),
    fabric_peer:close(C2).

%% The server-side connection processes of this VM (those of the test's server).
server_conns() ->
    [P || P <- processes(), proc_lib:initial_call(P) =:= {fabric_peer_server, init, ['Argument__1']}].

%% Until every flooder is done (all sends `ok'): the largest number of routed messages
%% S held for C2 (the mailbox and pending queue of S's connection to `Node'), the memory
%% of S's connections, and C1's credit in use and commands waiting.
sample(C1, Node, Flooders, Acc) ->
    receive
        {flooded, F, Rs} ->
            [ok] = Rs,
            case Flooders -- [F] of
                [] -> Acc;
                Left -> sample(C1, Node, Left, Acc)
            end
    after 20 ->
            Conns = server_conns(),
            Held = lists:sum([held(P, Node) || P <- Conns]),
            Mem = lists:sum([M || P <- Conns, {memory, M} <- [process_info(P, memory)]]),
            #{credit_out := Out, pending := Pending} = fabric_peer:info(C1),
            sample(C1, Node, Flooders,
                   #{held => max(Held, maps:get(held, Acc)), mem => max(Mem, maps:get(mem, Acc)),
                     c1_out => max(Out, maps:get(c1_out, Acc)),
                     c1_pending => max(Pending, maps:get(c1_pending, Acc))})
    end.

%% (the pending queue first: what the connection takes from its mailbox while it answers
%% is then not counted twice)
held(P, Node) ->
    NodeBin = atom_to_binary(Node),
    case catch fabric_peer:info(P) of
        #{pending := Pending, peer_node := NodeBin} ->
            case process_info(P, message_queue_len) of
                {message_queue_len, L} -> L + Pending;
                undefined -> 0
            end;
        _ -> 0
    end.

wait_count_long(Pid, N) ->
    true = fabric_peer_test_lib:wait_until(fun() -> maps:get(n, report(Pid)) >= N end, 700),
    report(Pid).
