%% @doc Erlang side of `make bench' (bench/run.py): command loop and benchmark processes.
%%
%% Compiled at bench time with erlc into a temp dir and started, with the fabric_peer ebin
%% (and, with `ORIG_EBIN', the original implementation's beams) on the code path, as
%% `erl -sname ... -noshell -run fabric_bench main'. The node prints `ready <node>', then
%% reads one Erlang term per line on stdin (parsed by `fabric_peer_cli:parse/1', the one
%% place the bench depends on the erlang_peer test harness) and answers each with one line
%% on stdout: `ok <JSON>' or `error <text>'. Logs go to stderr.
%%
%% Server side:
%% <ul>
%% <li>`bench_echo': `{From, M}' -> `From ! {self(), M}';</li>
%% <li>`bench_counter': `{bench_start, From, N}' spawns a counting process and replies
%%   `{bench_counter, Pid}'; that process receives N messages, then sends
%%   `{bench_done, self(), N}' to From (one acknowledgement at the end); the count of the
%%   latest counter is readable with `counted' while it runs (a burst that timed out);</li>
%% <li>`bench_counter' also takes `{bench_slow, From, N, DelayMs}': the counter sleeps
%%   DelayMs per message and ends with `{bench_done, self(), N, PeakMailbox}';</li>
%% <li>`bench_pids': `{bench_pids, From, N, Chunk}' sends N distinct live pids (idle
%%   hibernated processes, spawned once and kept) as `{bench_pids_chunk, [Pid]}' messages of
%%   Chunk pids, then `{bench_pids_done, N}';</li>
%% <li>`simple_server' (only with the original, whose allowed names are fixed):
%%   `{bench_to, Name, Msg}' -> `Name ! Msg', so the original reaches the same processes.</li>
%% </ul>
%% ```
%% {serve, Secret}              fabric_peer servers (extended; legacy allowed) + raw echo
%%                              -> {"ext_port", "legacy_port", "raw_port", "otp", ...}
%% {orig_serve, Secret}         the original's server (ORIG_EBIN) -> {"port"}
%% counted                      messages counted so far by the latest counter
%% '''
%% Client-side commands are in `fabric_bench_drv'. `quit' stops the node.
-module(fabric_bench).

-export([main/0, idle/0, sink/0, orig_available/0, without_output/1]).

-define(NAMES, [bench_echo, bench_counter, bench_pids]).
-define(COUNTED, {?MODULE, counted}).

main() ->
    _ = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    logger:set_primary_config(level, warning),
    {ok, _} = application:ensure_all_started(fabric_peer),
    io:setopts(standard_io, [binary]),
    persistent_term:put(?COUNTED, counters:new(1, [write_concurrency])),
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

%%% ------------------------------------------------------------------ server commands

handle({serve, Secret}, St) ->
    start_bench_processes(),
    {ok, Ext} = fabric_peer:start_server(0, Secret, #{allowed => ?NAMES}),
    {ok, Leg} = fabric_peer:start_server(0, Secret, #{allowed => ?NAMES,
                                                        allow_legacy_auth => true}),
    RawPort = raw_echo_server(),
    {{ok, #{ext_port => fabric_peer:port(Ext), legacy_port => fabric_peer:port(Leg),
            raw_port => RawPort, node => node(),
            otp => list_to_binary(erlang:system_info(otp_release)),
            schedulers => erlang:system_info(schedulers_online)}},
     St#{servers => [Ext, Leg]}};
handle({orig_serve, Secret}, St) ->
    ok = orig_available(),
    Port = free_port(),
    ok = without_output(fun() -> fabric:start_server(Port, Secret) end),
    Dispatch = spawn(fun dispatch/0),
    true = register(simple_server, Dispatch),
    {{ok, #{port => Port, module => list_to_binary(code:which(fabric))}}, St};
handle(counted, St) ->
    {{ok, counters:get(persistent_term:get(?COUNTED), 1)}, St};
handle(Cmd, St) ->
    fabric_bench_drv:handle(Cmd, St).

%% @doc The original's beams on the code path, or a clear error.
orig_available() ->
    case code:ensure_loaded(fabric) of
        {module, fabric} ->
            case erlang:function_exported(fabric, start_server, 2)
                andalso erlang:function_exported(fabric, start_client, 3) of
                true -> ok;
                false -> error({not_the_original_fabric, code:which(fabric)})
            end;
        {error, Why} -> error({original_fabric_not_loadable, Why})
    end.

%% The original prints progress with io:format; the command channel is stdout, so whatever
%% it starts gets a group leader that discards output.
without_output(Fun) ->
    Parent = self(),
    Ref = make_ref(),
    Sink = spawn(fun ?MODULE:sink/0),
    spawn(fun() ->
                  group_leader(Sink, self()),
                  Parent ! {Ref, Fun()},
                  receive stop -> ok end
          end),
    receive {Ref, Res} -> Res after 15000 -> error(original_start_timeout) end.

%% @private An io server that accepts and drops every request.
sink() ->
    receive
        {io_request, From, ReplyAs, _} -> From ! {io_reply, ReplyAs, ok}, sink();
        _ -> sink()
    end.

free_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}, {reuseaddr, true}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    Port.

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
            Ctr = persistent_term:get(?COUNTED),
            counters:put(Ctr, 1, 0),
            Pid = spawn(fun() -> count(From, N, 0, Ctr) end),
            From ! {bench_counter, Pid},
            counter_factory();
        {bench_slow, From, N, DelayMs} when is_pid(From), is_integer(N), N >= 0,
                                            is_integer(DelayMs), DelayMs >= 0 ->
            Pid = spawn(fun() -> slow(From, N, 0, DelayMs, 0) end),
            From ! {bench_counter, Pid},
            counter_factory();
        _ -> counter_factory()
    end.

count(From, N, N, _) -> From ! {bench_done, self(), N};
count(From, N, I, Ctr) -> receive _ -> counters:add(Ctr, 1, 1), count(From, N, I + 1, Ctr) end.

%% The slow receiver: DelayMs per message; reports the longest mailbox it saw.
slow(From, N, N, _, Peak) -> From ! {bench_done, self(), N, Peak};
slow(From, N, I, DelayMs, Peak) ->
    receive
        _ ->
            {message_queue_len, Q} = erlang:process_info(self(), message_queue_len),
            timer:sleep(DelayMs),
            slow(From, N, I + 1, DelayMs, max(Peak, Q + 1))
    end.

dispatch() ->
    receive
        {bench_to, Name, Msg} when is_atom(Name) ->
            case lists:member(Name, ?NAMES) of
                true -> Name ! Msg;
                false -> ok
            end,
            dispatch();
        _ -> dispatch()
    end.

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

%% The raw ceiling: gen_tcp `{packet, 4}' with nodelay, every frame echoed as is.
raw_echo_server() ->
    {ok, L} = gen_tcp:listen(0, raw_opts()),
    {ok, Port} = inet:port(L),
    Acceptor = spawn(fun() -> raw_accept(L) end),
    ok = gen_tcp:controlling_process(L, Acceptor),
    Port.

raw_opts() ->
    [binary, {ip, {127, 0, 0, 1}}, {packet, 4}, {nodelay, true}, {active, false}, {reuseaddr, true}].

raw_accept(L) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            Pid = spawn(fun() -> receive go -> raw_echo(S) end end),
            ok = gen_tcp:controlling_process(S, Pid),
            Pid ! go,
            raw_accept(L);
        {error, _} -> ok
    end.

raw_echo(S) ->
    case gen_tcp:recv(S, 0) of
        {ok, Bin} -> ok = gen_tcp:send(S, Bin), raw_echo(S);
        {error, _} -> gen_tcp:close(S)
    end.

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
