%% @doc Erlang side of `make bench' (bench/run.py): benchmark processes and drivers.
%%
%% Compiled at bench time with erlc into a temp dir and started, with the fabric_peer ebin
%% on the code path, as `erl -sname ... -noshell -run fabric_bench main'. The node prints
%% `ready <node>', then reads one Erlang term per line on stdin and answers each with one
%% line on stdout: `ok <JSON>' or `error <text>'. Logs go to stderr.
%%
%% Server side (`{serve, Secret}'): registers the benchmark processes and starts two
%% fabric_peer servers allowing them, one for extended clients and one that also accepts
%% legacy (MD5) authentication:
%% <ul>
%% <li>`bench_echo': `{From, M}' -> `From ! {self(), M}';</li>
%% <li>`bench_counter': `{bench_start, From, N}' spawns a counting process and replies
%%   `{bench_counter, Pid}'; that process receives N messages, then sends
%%   `{bench_done, self(), N}' to From (one acknowledgement at the end);</li>
%% <li>`bench_pids': `{bench_pids, From, N, Chunk}' sends N distinct live pids (idle
%%   hibernated processes, spawned once and kept) as `{bench_pids_chunk, [Pid]}' messages of
%%   Chunk pids, then `{bench_pids_done, N}'.</li>
%% </ul>
%% Client side (drivers, timed inside Erlang with erlang:monotonic_time/1): connections are
%% kept under a tag across commands so repetitions reuse them.
%% ```
%% {serve, Secret}                              -> {"ext_port", "legacy_port", "node"}
%% {connect, Tag, Port, Secret, extended|legacy}
%% {dist_connect, Tag, SrvNode}                 plain Erlang distribution (the reference)
%% {pingpong, Tag, N}                           `Echo ! {self(), I}', wait for the reply
%% {stream, Tag, N, Size}                       N messages (`{n, I}', or a Size-byte binary)
%%                                              with fabric_peer:send/2 (distribution: `!')
%% {proxies, Port, Secret, N, Chunk}            erlang:memory() delta per live proxy
%% {handshakes, Port, Secret, Mode, N, Conc}    connect + handshake + close, per second
%% quit
%% '''
-module(fabric_bench).

-export([main/0, idle/0]).

-define(TIMEOUT, 600000).
-define(NAMES, [bench_echo, bench_counter, bench_pids]).

main() ->
    _ = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    logger:set_primary_config(level, warning),
    {ok, _} = application:ensure_all_started(fabric_peer),
    io:setopts(standard_io, [binary]),
    out(["ready ", atom_to_list(node())]),
    loop(#{}),
    halt(0).

loop(St) ->
    case io:get_line(standard_io, "") of
        eof -> ok;
        {error, _} -> ok;
        Line ->
            case fabric_peer_cli:parse(Line) of
                empty -> loop(St);
                {ok, quit} -> out("ok \"bye\"");
                {ok, Cmd} ->
                    {Reply, St1} = try handle(Cmd, St)
                                   catch C:R:Stk ->
                                           {{error, {C, R, lists:sublist(Stk, 3)}}, St}
                                   end,
                    case Reply of
                        {ok, V} -> out(["ok ", json(V)]);
                        {error, E} -> out(["error ", io_lib:format("~0tp", [E])])
                    end,
                    loop(St1);
                {error, Why} ->
                    out(["error ", io_lib:format("~0tp", [{parse, Why}])]),
                    loop(St)
            end
    end.

out(IoData) ->
    io:put_chars(standard_io, [IoData, $\n]).

%%% ------------------------------------------------------------------ commands

handle({serve, Secret}, St) ->
    start_bench_processes(),
    {ok, Ext} = fabric_peer:start_server(0, Secret, #{allowed => ?NAMES}),
    {ok, Leg} = fabric_peer:start_server(0, Secret, #{allowed => ?NAMES,
                                                        allow_legacy_auth => true}),
    {{ok, #{ext_port => fabric_peer:port(Ext), legacy_port => fabric_peer:port(Leg),
            node => node(), otp => list_to_binary(erlang:system_info(otp_release)),
            schedulers => erlang:system_info(schedulers_online)}},
     St#{servers => [Ext, Leg]}};
handle({connect, Tag, Port, Secret, Mode}, St) ->
    Opts = case Mode of
               legacy -> #{mode => legacy, allow_legacy_auth => true};
               extended -> #{}
           end,
    {ok, Conn} = fabric_peer:connect("127.0.0.1", Port, Secret, Opts),
    {{ok, #{mode => Mode}}, St#{Tag => {fabric, Conn}}};
handle({dist_connect, Tag, SrvNode}, St) ->
    true = net_kernel:connect_node(SrvNode),
    {{ok, #{node => SrvNode}}, St#{Tag => {dist, SrvNode}}};
handle({pingpong, Tag, N}, St) ->
    Dest = maps:get(Tag, St),
    {run(fun() -> pingpong(Dest, N) end), St};
handle({stream, Tag, N, Size}, St) ->
    Dest = maps:get(Tag, St),
    {run(fun() -> stream(Dest, N, Size) end), St};
handle({proxies, Port, Secret, N, Chunk}, St) ->
    {run(fun() -> proxies(Port, Secret, N, Chunk) end), St};
handle({handshakes, Port, Secret, Mode, N, Conc}, St) ->
    {run(fun() -> handshakes(Port, Secret, Mode, N, Conc) end), St};
handle({close, Tag}, St) ->
    case maps:get(Tag, St, undefined) of
        {fabric, Conn} -> fabric_peer:close(Conn);
        _ -> ok
    end,
    {{ok, true}, maps:remove(Tag, St)};
handle(Other, St) ->
    {{error, {unknown_command, Other}}, St}.

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

%%% ------------------------------------------------------------------ server processes

start_bench_processes() ->
    [begin
         case whereis(Name) of
             undefined -> ok;
             Old -> unregister(Name), exit(Old, kill)
         end,
         true = register(Name, spawn(F))
     end || {Name, F} <- [{bench_echo, fun echo/0},
                          {bench_counter, fun counter_factory/0},
                          {bench_pids, fun() -> pid_source([]) end}]],
    ok.

echo() ->
    receive
        {From, M} when is_pid(From) -> From ! {self(), M}, echo();
        _ -> echo()
    end.

counter_factory() ->
    receive
        {bench_start, From, N} when is_pid(From), is_integer(N), N >= 0 ->
            Pid = spawn(fun() -> count(From, N, 0) end),
            From ! {bench_counter, Pid},
            counter_factory();
        _ -> counter_factory()
    end.

count(From, N, N) -> From ! {bench_done, self(), N};
count(From, N, I) -> receive _ -> count(From, N, I + 1) end.

pid_source(Pids) ->
    receive
        {bench_pids, From, N, Chunk} when is_pid(From) ->
            Have = length(Pids),
            Pids1 = [spawn(fun() -> erlang:hibernate(?MODULE, idle, []) end)
                     || _ <- lists:seq(1, max(0, N - Have))] ++ Pids,
            send_chunks(From, lists:sublist(Pids1, N), Chunk),
            From ! {bench_pids_done, N},
            pid_source(Pids1);
        _ -> pid_source(Pids)
    end.

send_chunks(_, [], _) -> ok;
send_chunks(From, Pids, Chunk) when length(Pids) =< Chunk -> From ! {bench_pids_chunk, Pids};
send_chunks(From, Pids, Chunk) ->
    {H, T} = lists:split(Chunk, Pids),
    From ! {bench_pids_chunk, H},
    send_chunks(From, T, Chunk).

%% @private
idle() -> receive stop -> ok; _ -> erlang:hibernate(?MODULE, idle, []) end.

%%% ------------------------------------------------------------------ drivers

now_ns() -> erlang:monotonic_time(nanosecond).

%% Send to a registered name of the peer (fabric) or of the other node (distribution).
send_name({fabric, Conn}, Name, Msg) -> ok = fabric_peer:send({Conn, Name}, Msg);
send_name({dist, Node}, Name, Msg) -> {Name, Node} ! Msg, ok.

%% The echo process's pid (a proxy with fabric): from its first reply.
echo_pid(Dest) ->
    send_name(Dest, bench_echo, {self(), hello}),
    receive {Echo, hello} -> Echo after 10000 -> exit(no_echo) end.

pingpong(Dest, N) ->
    Echo = echo_pid(Dest),
    Lat = pp_loop(Echo, 0, N, []),
    Total = lists:sum(Lat),
    Sorted = lists:sort(Lat),
    #{n => N, elapsed_s => Total / 1.0e9, rt_per_s => N / (Total / 1.0e9),
      median_us => pct(Sorted, N, 0.5) / 1000, p99_us => pct(Sorted, N, 0.99) / 1000,
      api => <<"Proxy ! {self(), N}">>}.

pp_loop(_, N, N, Acc) -> Acc;
pp_loop(Echo, I, N, Acc) ->
    T0 = now_ns(),
    Echo ! {self(), I},
    receive {Echo, I} -> ok end,
    pp_loop(Echo, I + 1, N, [now_ns() - T0 | Acc]).

pct(Sorted, N, P) -> lists:nth(max(1, min(N, round(P * N))), Sorted).

stream(Dest, N, Size) ->
    send_name(Dest, bench_counter, {bench_start, self(), N}),
    Counter = receive {bench_counter, C} -> C after 10000 -> exit(no_counter) end,
    Send = case Dest of
               {fabric, _} -> fun(M) -> ok = fabric_peer:send(Counter, M) end;
               {dist, _} -> fun(M) -> Counter ! M end
           end,
    Payload = case Size of 0 -> small; _ -> binary:copy(<<"x">>, Size) end,
    T0 = now_ns(),
    stream_loop(Send, Payload, 0, N),
    %% not matched on Counter: erlang_peer may deliver the pid of a process that exits
    %% right after sending as a new dead pid rather than its proxy
    receive {bench_done, _, N} -> ok after ?TIMEOUT -> exit(no_done) end,
    S = (now_ns() - T0) / 1.0e9,
    #{n => N, elapsed_s => S, msgs_per_s => N / S, mb_per_s => N * Size / S / 1.0e6,
      payload_bytes => Size,
      api => case Dest of {fabric, _} -> <<"fabric_peer:send/2">>; _ -> <<"!">> end}.

stream_loop(_, _, N, N) -> ok;
stream_loop(Send, small, I, N) -> Send({n, I}), stream_loop(Send, small, I + 1, N);
stream_loop(Send, Bin, I, N) -> Send(Bin), stream_loop(Send, Bin, I + 1, N).

gc_all() -> [erlang:garbage_collect(P) || P <- processes()], ok.

proxies(Port, Secret, N, Chunk) ->
    {ok, Conn} = fabric_peer:connect("127.0.0.1", Port, Secret, #{}),
    %% a first exchange so the connection's own proxies (bench_pids) exist before measuring
    ok = fabric_peer:send({Conn, bench_pids}, {bench_pids, self(), 0, Chunk}),
    receive {bench_pids_done, 0} -> ok after 10000 -> exit(no_pid_source) end,
    Before0 = (fabric_peer:info(Conn)),
    gc_all(),
    M0 = erlang:memory(),
    P0 = erlang:system_info(process_count),
    T0 = now_ns(),
    ok = fabric_peer:send({Conn, bench_pids}, {bench_pids, self(), N, Chunk}),
    Got = recv_chunks(0),
    T1 = now_ns(),
    Info = fabric_peer:info(Conn),
    gc_all(),
    M1 = erlang:memory(),
    P1 = erlang:system_info(process_count),
    fabric_peer:close(Conn),
    D = fun(K) -> proplists:get_value(K, M1) - proplists:get_value(K, M0) end,
    #{n => Got, proxies => maps:get(proxies, Info) - maps:get(proxies, Before0),
      bytes_per_proxy => D(total) / Got, total_delta => D(total),
      processes_delta => D(processes), ets_delta => D(ets), binary_delta => D(binary),
      process_count_delta => P1 - P0, create_s => (T1 - T0) / 1.0e9,
      proxies_per_s => Got / ((T1 - T0) / 1.0e9)}.

recv_chunks(Got) ->
    receive
        {bench_pids_chunk, Pids} -> recv_chunks(Got + length(Pids));
        {bench_pids_done, _} -> Got
    after 120000 -> exit({pids_timeout, Got})
    end.

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

%%% ------------------------------------------------------------------ JSON out

json(M) when is_map(M) ->
    ["{", lists:join(",", [[json(key(K)), ":", json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), "}"];
json(L) when is_list(L) -> ["[", lists:join(",", [json(X) || X <- L]), "]"];
json(true) -> "true";
json(false) -> "false";
json(undefined) -> "null";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(B) when is_binary(B) -> [$", [esc(C) || <<C>> <= B], $"];
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [short]);
json(T) -> json(iolist_to_binary(io_lib:format("~0tp", [T]))).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) when is_binary(K) -> K;
key(K) -> iolist_to_binary(io_lib:format("~0tp", [K])).

esc($") -> "\\\"";
esc($\\) -> "\\\\";
esc(C) when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
esc(C) -> C.
