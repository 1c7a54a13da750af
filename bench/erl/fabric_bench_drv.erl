%% @doc Client-side drivers of `make bench' (commands of the `fabric_bench' loop).
%%
%% Every measurement is one small batch, timed inside Erlang with
%% erlang:monotonic_time/1; bench/run.py interleaves the batches of all pairings and takes
%% the CPU time of both sides around each command. Destinations are kept under a tag
%% across commands so batches reuse their connection:
%% ```
%% {connect, Tag, Port, Secret, extended|legacy|plain}   a fabric_peer client (plain: no acks, credit)
%% {dist_connect, Tag, SrvNode}                    plain Erlang distribution (reference)
%% {orig_connect, Tag, Port, Secret}               the original implementation's client
%% {raw_connect, Tag, Port}                        gen_tcp {packet,4} nodelay (ceiling)
%% {close, Tag}
%% {pingpong, Tag, N}        N round trips `Echo ! {self(), I}' (raw: a 32-byte frame)
%%                           -> {"n", "elapsed_ns", "lat_ns": [..]}
%% {stream, Tag, N, Size}    N messages (`{n, I}', or a Size-byte binary) `Counter ! M' to a
%%                           counter, acked once (end-to-end delivery); with fabric the
%%                           proxy's credit holds the sender back (docs/protocol.md 12), and
%%                           a message dropped on overflow fails the batch
%% {stream_send, Tag, N, Size}  the same with a blocking fabric_peer:send/2 per message
%% {burst, Tag, N, CapMs}    N times `Proxy ! {n, I}' as fast as possible, acked once;
%%                           `{"timed_out": true}' after CapMs
%% {drop, Tag}               end a connection still busy with a timed-out burst (the
%%                           original has no working close: its `fabric' is killed)
%% {slow, Tag, N, DelayMs, RecvOsPid}   N messages `fabric_peer:send/2' to a receiver
%%                           sleeping DelayMs per message (bench_slow): the peaks of the
%%                           connection's pending/outbox/credit and both sides' RSS growth
%% {proxies, Port, Secret, N, Chunk, IdleMs}   erlang:memory() per live (then idle) proxy,
%%                           and erlang:process_info(P, memory) of a sample of them
%% {handshakes, Port, Secret, Mode, N, Conc}   connect + handshake + close, per second
%% '''
-module(fabric_bench_drv).

-export([handle/2]).

-define(TIMEOUT, 600000).
-define(RAW_FRAME, <<0:256>>).
%% proxies measured one by one with process_info/2 (scale)
-define(PROXY_SAMPLE, 1000).

handle({connect, Tag, Port, Secret, Mode}, St) ->
    Opts = case Mode of
               legacy -> #{mode => legacy, allow_legacy_auth => true};
               extended -> #{};
               %% acks and credit off (what they cost, issue 12)
               plain -> #{features => fabric_peer_opts:all_features() -- [<<"acks">>, <<"credit">>]}
           end,
    {ok, Conn} = fabric_peer:connect("127.0.0.1", Port, Secret, Opts),
    {{ok, #{mode => Mode}}, St#{Tag => {fabric, Conn}}};
handle({dist_connect, Tag, SrvNode}, St) ->
    true = net_kernel:connect_node(SrvNode),
    {{ok, #{node => SrvNode}}, St#{Tag => {dist, SrvNode}}};
handle({orig_connect, Tag, Port, Secret}, St) ->
    ok = fabric_bench_orig_client(Port, Secret),
    {{ok, #{port => Port}}, St#{Tag => orig}};
handle({raw_connect, Tag, Port}, St) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port,
                              [binary, {packet, 4}, {nodelay, true}, {active, false}]),
    {{ok, #{port => Port}}, St#{Tag => {raw, S}}};
handle({close, Tag}, St) ->
    case maps:get(Tag, St, undefined) of
        {fabric, Conn} -> fabric_peer:close(Conn);
        {raw, S} -> gen_tcp:close(S);
        _ -> ok
    end,
    {{ok, true}, maps:remove(Tag, St)};
handle({pingpong, Tag, N}, St) ->
    case maps:get(Tag, St) of
        {raw, S} -> {{ok, raw_pingpong(S, N)}, St};  % the socket is owned by this process
        Dest -> {run(fun() -> pingpong(Dest, N) end), St}
    end;
handle({stream, Tag, N, Size}, St) ->
    Dest = maps:get(Tag, St),
    {run(fun() -> stream(Dest, bang, N, Size) end), St};
handle({stream_send, Tag, N, Size}, St) ->
    {fabric, _} = Dest = maps:get(Tag, St),
    {run(fun() -> stream(Dest, send, N, Size) end), St};
handle({burst, Tag, N, CapMs}, St) ->
    Dest = maps:get(Tag, St),
    {run(fun() -> burst(Dest, N, CapMs) end), St};
handle({drop, Tag}, St) ->
    case maps:get(Tag, St, undefined) of
        orig -> kill(whereis(fabric));
        {fabric, Conn} ->
            {Pid, MRef} = spawn_monitor(fun() -> fabric_peer:close(Conn) end),
            receive {'DOWN', MRef, process, Pid, _} -> ok
            after 5000 -> kill(Pid), kill(Conn)
            end;
        _ -> ok
    end,
    {{ok, true}, maps:remove(Tag, St)};
handle({slow, Tag, N, DelayMs, RecvOsPid}, St) ->
    {fabric, Conn} = maps:get(Tag, St),
    {run(fun() -> slow(Conn, N, DelayMs, RecvOsPid) end), St};
handle({proxies, Port, Secret, N, Chunk, IdleMs}, St) ->
    {run(fun() -> proxies(Port, Secret, N, Chunk, IdleMs) end), St};
handle({handshakes, Port, Secret, Mode, N, Conc}, St) ->
    {run(fun() -> handshakes(Port, Secret, Mode, N, Conc) end), St};
handle(Other, St) ->
    {{error, {unknown_command, Other}}, St}.

kill(undefined) -> ok;
kill(Pid) -> exit(Pid, kill), ok.

%% The original registers `fabric' on this node for its one connection.
fabric_bench_orig_client(Port, Secret) ->
    case whereis(fabric) of
        undefined -> ok;
        _ -> error(original_client_already_connected)
    end,
    ok = fabric_bench:orig_available(),
    fabric_bench:without_output(fun() -> fabric:start_client("127.0.0.1", Port, Secret) end).

%% Every measurement runs in a fresh process (empty mailbox, fresh heap).
run(Fun) ->
    Parent = self(),
    Ref = make_ref(),
    {Pid, MRef} = spawn_monitor(fun() -> Parent ! {Ref, Fun()} end),
    receive
        {Ref, Result} ->
            demonitor(MRef, [flush]),
            {ok, Result};
        {'DOWN', MRef, process, Pid, Why} -> {error, Why}
    after ?TIMEOUT ->
            exit(Pid, kill),
            {error, timeout}
    end.

now_ns() -> erlang:monotonic_time(nanosecond).

%% Send to a registered name of the peer (fabric), of the other node (distribution), or
%% through the original's one allowed name (see fabric_bench's `simple_server').
send_name({fabric, Conn}, Name, Msg) -> ok = fabric_peer:send({Conn, Name}, Msg);
send_name({dist, Node}, Name, Msg) -> {Name, Node} ! Msg, ok;
send_name(orig, Name, Msg) -> ok = fabric:send(simple_server, {bench_to, Name, Msg}).

%% The echo process's pid (a proxy with fabric): from its first reply.
echo_pid(Dest) ->
    send_name(Dest, bench_echo, {self(), hello}),
    receive {Echo, hello} -> Echo after 10000 -> exit(no_echo) end.

pingpong(Dest, N) ->
    Echo = echo_pid(Dest),
    T0 = now_ns(),
    Lat = pp_loop(Echo, 0, N, []),
    #{n => N, elapsed_ns => now_ns() - T0, lat_ns => Lat}.

pp_loop(_, N, N, Acc) -> Acc;
pp_loop(Echo, I, N, Acc) ->
    T0 = now_ns(),
    Echo ! {self(), I},
    receive {Echo, I} -> ok end,
    pp_loop(Echo, I + 1, N, [now_ns() - T0 | Acc]).

raw_pingpong(S, N) ->
    T0 = now_ns(),
    Lat = raw_loop(S, N, []),
    #{n => N, elapsed_ns => now_ns() - T0, lat_ns => Lat, frame_bytes => byte_size(?RAW_FRAME)}.

raw_loop(_, 0, Acc) -> Acc;
raw_loop(S, I, Acc) ->
    T0 = now_ns(),
    ok = gen_tcp:send(S, ?RAW_FRAME),
    {ok, _} = gen_tcp:recv(S, 0, 10000),
    raw_loop(S, I - 1, [now_ns() - T0 | Acc]).

counter_pid(Dest, N) ->
    send_name(Dest, bench_counter, {bench_start, self(), N}),
    receive {bench_counter, C} -> C after 10000 -> exit(no_counter) end.

%% not matched on the counter's pid: erlang_peer may deliver the pid of a process that
%% exits right after sending as a new dead pid rather than its proxy
wait_done(N, Timeout) ->
    receive {bench_done, _, N} -> ok after Timeout -> timeout end.

stream(Dest, How, N, Size) ->
    Counter = counter_pid(Dest, N),
    Send = case How of
               send -> fun(M) -> ok = fabric_peer:send(Counter, M) end;
               bang -> fun(M) -> Counter ! M end
           end,
    Dropped0 = dropped(Dest),
    Payload = case Size of 0 -> small; _ -> binary:copy(<<"x">>, Size) end,
    T0 = now_ns(),
    stream_loop(Send, Payload, 0, N),
    ok = wait_all(Dest, Dropped0, N, T0 + ?TIMEOUT * 1000000),
    Elapsed = now_ns() - T0,
    %% (after the clock: a call to the connection)
    case dropped(Dest) - Dropped0 of
        0 -> ok;
        K -> exit({dropped_overflow, K, of_n, N})   % and some other message counted
    end,
    #{n => N, elapsed_ns => Elapsed, payload_bytes => Size}.

%% The counter's ack; meanwhile the connection's `dropped_overflow' is watched: a message
%% dropped beyond max_pending_messages would never be counted, and a batch missing one
%% must fail at once rather than wait for its timeout or report a figure.
-define(DROP_POLL_MS, 200).
wait_all(Dest, Dropped0, N, Deadline) ->
    case wait_done(N, ?DROP_POLL_MS) of
        ok -> ok;
        timeout ->
            case {dropped(Dest) - Dropped0, now_ns() < Deadline} of
                {0, true} -> wait_all(Dest, Dropped0, N, Deadline);
                {0, false} -> exit(stream_timeout);
                {K, _} -> exit({dropped_overflow, K, of_n, N})
            end
    end.

dropped({fabric, Conn}) -> maps:get(dropped_overflow, fabric_peer:info(Conn), 0);
dropped(_) -> 0.

stream_loop(_, _, N, N) -> ok;
stream_loop(Send, small, I, N) -> Send({n, I}), stream_loop(Send, small, I + 1, N);
stream_loop(Send, Bin, I, N) -> Send(Bin), stream_loop(Send, Bin, I + 1, N).

burst(Dest, N, CapMs) ->
    Counter = counter_pid(Dest, N),
    T0 = now_ns(),
    burst_loop(Counter, 0, N),
    Sent = now_ns(),
    case wait_done(N, CapMs) of
        ok -> #{n => N, elapsed_ns => now_ns() - T0, send_loop_ns => Sent - T0};
        timeout -> #{n => N, timed_out => true, elapsed_ns => now_ns() - T0,
                     send_loop_ns => Sent - T0}
    end.

burst_loop(_, N, N) -> ok;
burst_loop(Counter, I, N) -> Counter ! {n, I}, burst_loop(Counter, I + 1, N).

%% The slow-receiver run with an erlang_peer sender (bench/flow.py): a blocking send per
%% message, the connection's figures sampled every ?SLOW_SAMPLE sends.
-define(SLOW_SAMPLE, 32).
slow(Conn, N, DelayMs, RecvOsPid) ->
    ok = fabric_peer:send({Conn, bench_counter}, {bench_slow, self(), N, DelayMs}),
    Counter = receive {bench_counter, C} -> C after 10000 -> exit(no_counter) end,
    Info0 = fabric_peer:info(Conn),
    Rss0 = rss(os:getpid()), RRss0 = rss(RecvOsPid),
    T0 = now_ns(),
    Peaks = slow_loop(Conn, Counter, 0, N, {0, 0, 0, 0, 0}, {Rss0, RRss0, RecvOsPid}),
    Sent = now_ns(),
    Peak = receive {bench_done, _, N, P} -> P after ?TIMEOUT -> exit(slow_timeout) end,
    T1 = now_ns(),
    {Pending, Outbox, Credit, Rss, RRss} = Peaks,
    Info1 = fabric_peer:info(Conn),
    #{n => N, delay_ms => DelayMs, send_loop_s => (Sent - T0) / 1.0e9, elapsed_s => (T1 - T0) / 1.0e9,
      msgs_per_s => N / ((T1 - T0) / 1.0e9),
      features => maps:get(features, Info0),
      credit_peer => case maps:get(credit_peer, Info0, undefined) of
                         undefined -> undefined;
                         W -> tuple_to_list(W)
                     end,
      sender_peak_pending => Pending, sender_peak_unacknowledged => Outbox,
      sender_peak_credit_out => Credit,
      sender_rss_growth_mb => Rss / 1.0e6, receiver_peak_mailbox => Peak,
      receiver_rss_growth_mb => RRss / 1.0e6,
      dropped_overflow => maps:get(dropped_overflow, Info1, 0) - maps:get(dropped_overflow, Info0, 0)}.

slow_loop(_, _, N, N, Peaks, _) -> Peaks;
slow_loop(Conn, Counter, I, N, Peaks, Rss) ->
    ok = fabric_peer:send(Counter, {n, I}),
    Peaks1 = case I rem ?SLOW_SAMPLE of
                 0 -> slow_sample(Conn, Peaks, Rss);
                 _ -> Peaks
             end,
    slow_loop(Conn, Counter, I + 1, N, Peaks1, Rss).

slow_sample(Conn, {Pending, Outbox, Credit, R, RR}, {Rss0, RRss0, RecvOsPid}) ->
    Info = fabric_peer:info(Conn),
    {max(Pending, maps:get(pending, Info, 0)), max(Outbox, maps:get(outbox, Info, 0)),
     max(Credit, maps:get(credit_out, Info, 0)), max(R, rss(os:getpid()) - Rss0),
     max(RR, rss(RecvOsPid) - RRss0)}.

%% Resident set size of OS process Pid (bytes; 0 where /proc cannot tell).
rss(Pid) ->
    case file:read_file("/proc/" ++ to_list(Pid) ++ "/statm") of
        {ok, B} ->
            [_, Pages | _] = binary:split(B, <<" ">>, [global]),
            binary_to_integer(Pages) * 4096;
        _ -> 0
    end.

to_list(P) when is_integer(P) -> integer_to_list(P);
to_list(P) -> P.

gc_all() -> [erlang:garbage_collect(P) || P <- processes()], ok.

proxies(Port, Secret, N, Chunk, IdleMs) ->
    {ok, Conn} = fabric_peer:connect("127.0.0.1", Port, Secret, #{}),
    %% a first exchange so the connection's own proxies (bench_pids) exist before measuring
    ok = fabric_peer:send({Conn, bench_pids}, {bench_pids, self(), 0, Chunk}),
    receive {bench_pids_done, 0} -> ok after 10000 -> exit(no_pid_source) end,
    Before0 = fabric_peer:info(Conn),
    gc_all(),
    M0 = erlang:memory(),
    P0 = erlang:system_info(process_count),
    T0 = now_ns(),
    ok = fabric_peer:send({Conn, bench_pids}, {bench_pids, self(), N, Chunk}),
    %% every Every-th proxy is kept (a few words each) for process_info/2
    Every = max(1, N div ?PROXY_SAMPLE),
    {Got, Sample} = recv_chunks(0, Every, []),
    T1 = now_ns(),
    Info = fabric_peer:info(Conn),
    gc_all(),
    M1 = erlang:memory(),
    P1 = erlang:system_info(process_count),
    Live = process_memory(Sample),
    %% idle: nothing sent to the proxies for IdleMs (a proxy hibernates at the end of a 1 s
    %% period without a message, the original after 1.1 s)
    timer:sleep(IdleMs),
    M2 = erlang:memory(),
    Idle = process_memory(Sample),
    Hibernated = length([P || P <- Sample, erlang:process_info(P, current_function) =:=
                                               {current_function, {erlang, hibernate, 3}}]),
    fabric_peer:close(Conn),
    D = fun(M, K) -> proplists:get_value(K, M) - proplists:get_value(K, M0) end,
    #{n => Got, proxies => maps:get(proxies, Info) - maps:get(proxies, Before0),
      sample => length(Sample), sample_hibernated => Hibernated,
      process_bytes_per_proxy => Live, idle_process_bytes_per_proxy => Idle,
      bytes_per_proxy => D(M1, total) / Got, total_delta => D(M1, total),
      idle_ms => IdleMs, idle_bytes_per_proxy => D(M2, total) / Got,
      processes_delta => D(M1, processes), ets_delta => D(M1, ets), binary_delta => D(M1, binary),
      process_count_delta => P1 - P0, create_s => (T1 - T0) / 1.0e9,
      proxies_per_s => Got / ((T1 - T0) / 1.0e9)}.

recv_chunks(Got, Every, Sample) ->
    receive
        {bench_pids_chunk, Pids} ->
            Kept = [P || {I, P} <- lists:zip(lists:seq(Got + 1, Got + length(Pids)), Pids), I rem Every =:= 0],
            recv_chunks(Got + length(Pids), Every, Kept ++ Sample);
        {bench_pids_done, _} -> {Got, Sample}
    after 120000 -> exit({pids_timeout, Got})
    end.

%% The mean erlang:process_info(P, memory) of the proxies (monitors included).
process_memory([]) -> 0;
process_memory(Pids) ->
    lists:sum([M || P <- Pids, {memory, M} <- [erlang:process_info(P, memory)]]) / length(Pids).

handshakes(Port, Secret, Mode, N, Conc) ->
    Opts = case Mode of
               legacy -> #{mode => legacy, allow_legacy_auth => true, reconnect => false};
               extended -> #{reconnect => false}
           end,
    One = fun() ->
                  {ok, C} = fabric_peer:connect("127.0.0.1", Port, Secret, Opts),
                  fabric_peer:close(C)
          end,
    Per = max(1, N div Conc),
    Self = self(),
    T0 = now_ns(),
    Workers = [spawn_monitor(fun() -> [One() || _ <- lists:seq(1, Per)], Self ! {hs_done, self()} end)
               || _ <- lists:seq(1, Conc)],
    [receive
         {hs_done, W} -> ok;
         {'DOWN', R, process, W, Why} when Why =/= normal -> exit({handshake_failed, Why})
     after ?TIMEOUT -> exit(handshake_timeout)
     end || {W, R} <- Workers],
    S = (now_ns() - T0) / 1.0e9,
    #{n => Per * Conc, concurrency => Conc, elapsed_s => S, per_s => Per * Conc / S}.
