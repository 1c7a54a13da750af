%% @doc A proxy: the local stand-in for one remote process (docs/protocol.md section 4.3).
%%
%% Whatever is sent to a proxy is forwarded to its connection process, which sends it as
%% `{m, Id, Payload}'. The proxy ends with the remote process's real exit reason when the
%% DEAD notice arrives, so local links and monitors on it see what they would see on the
%% real process.
%%
%% Exit signals. The proxy traps exits and decides from what it receives, never from
%% tracing or timing (see README "Links and exit signals"):
%% <ul>
%% <li>`{'EXIT', From, R}' from a process the *peer* asked us to link (a `{link, A, B}'
%%   frame; `From' is B): if `From' is still linked or still alive it was `exit/2' and is
%%   reported (an `exit2' frame); otherwise it is the link breaking because `From' ended,
%%   which the peer learns from `From''s DEAD notice (never twice).</li>
%% <li>any other `{'EXIT', From, R}': either `exit(Proxy, R)' by `From', or the death of a
%%   local process that linked to the proxy with `link/1'. The peer is told the same thing
%%   in both cases, an `exit2' from `From' with `R', which is what the remote process
%%   observes for a link signal too; so no liveness check is needed to tell them apart.</li>
%% </ul>
%% `exit(Proxy, kill)' cannot be trapped: the proxy dies with `killed' and the connection,
%% which monitors it, sends `exit2 ... kill' itself. A trapped `{'EXIT', From, kill}' is
%% always a link signal (From ended with `kill'): with the `link_exit' feature the peer gets
%% it as one (`link_exit', trappable there), otherwise as `exit2 ... kill'.
%%
%% Flow (docs/protocol.md 12.6). A message sent to the proxy (`Proxy ! Msg', and
%% `fabric_peer:send/2' to it, which comes as a request so that both keep their order) is
%% forwarded to the connection only as far as an allowance the connection gives back as it
%% carries them out; the rest waits here, in order, so that the connection's mailbox stays
%% short whatever the burst. The messages waiting in all the proxies of a connection are
%% counted in a `counters' reference shared with it (slot 1; slot 2 is the connection's
%% own pending queue): beyond `max_pending_messages' a message of `!' is dropped and handed
%% to the connection to be counted and reported, a `send/2' request gets
%% `{error, overflow}'. A request still waiting at its deadline gets `{error, timeout}'.
%%
%% Idle. A proxy that got no message in a whole ?IDLE_MS period hibernates (one timer per
%% period, nothing per message): with nothing waiting it keeps only its connection, token,
%% allowance and links, under 1 KiB, and reads the counters again from the registry when a
%% message wakes it.
%%
%% This is a plain process, not a behaviour, on purpose: a proxy must forward every term
%% verbatim, including terms shaped like `gen_server' calls or system messages. It is not
%% started with `proc_lib' either: a proxy ending with the remote process's abnormal reason
%% is normal operation and must not produce a crash report. Control messages carry a
%% per-connection token no other process knows.
-module(fabric_peer_proxy).

-export([start/3, control/3, signal/3, request/5]).
%% the proxy's loop after hibernation (erlang:hibernate/3)
-export([wake/1]).
-ignore_xref([wake/1]).

%% Messages the connection lets a proxy forward before it gives allowance back.
-define(ALLOWANCE, 512).
%% A proxy that received nothing for a whole period of this length hibernates (issue 15: an
%% idle proxy costs under 1 KiB instead of ~3 KB); the next message wakes it. One timer per
%% period, not one per wait for a message: a proxy in use pays nothing per message but a
%% flag, and never hibernates.
-define(IDLE_MS, 1000).

-record(s, {conn :: pid(), token :: reference(),
            %% local processes linked to this proxy because the peer sent {link, A, B}
            peer_linked = #{} :: #{pid() => true},
            %% (below 0 after a barrier handed over more than the allowance)
            allow = ?ALLOWANCE :: integer(),
            q = queue:new() :: queue:queue({m, term()} | {s, term(), term(), integer()}),
            ctr :: counters:counters_ref() | undefined,
            max = 0 :: non_neg_integer(),
            %% a message arrived in this idle period (?IDLE_MS)
            busy = false :: boolean()}).

%% @doc Start the proxy for remote id `Id' of connection `Conn' (not linked: the
%% connection monitors it, and it monitors the connection). The proxy itself does not need
%% `Id': the connection maps it to the proxy.
%% `Token' is the connection's token, or `{Token, Counters, MaxPending}' (flow, above).
-spec start(pid(), pos_integer(), reference() | {reference(), counters:counters_ref(), pos_integer()}) -> pid().
start(Conn, _Id, {Token, Ctr, Max}) ->
    spawn(fun() -> init(Conn, Token, Ctr, Max) end);
start(Conn, _Id, Token) ->
    spawn(fun() -> init(Conn, Token, undefined, 0) end).

%% @doc `fabric_peer:send/2' to a proxy: the request goes through the proxy (its order
%% with the `!' messages is kept); the reply `{Tag, Result}' goes to `From' = `{Pid, Tag}'
%% (from the connection once issued, or from the proxy: overflow, timeout, ended).
-spec request(pid(), reference(), term(), term(), integer()) -> ok.
request(Proxy, Token, From, Msg, Deadline) ->
    Proxy ! {'$fabric_send', Token, From, Msg, Deadline},
    ok.

%% @doc Send a control command to a proxy: `{die, Reason}', `{link, Pid}', `{unlink, Pid}',
%% `{exit, Pid, Reason}' (the proxy calls `exit(Pid, Reason)', so `Pid' sees the proxy
%% as the sender), `{link_exit, Pid, Reason}' (the proxy links to `Pid' and ends with
%% `Reason') or `{barrier, N}' (see `barrier/2').
-spec control(pid(), reference(), term()) -> ok.
control(Proxy, Token, Cmd) ->
    Proxy ! {'$fabric_ctl', Token, Cmd},
    ok.

%% @doc A control command that sends a signal from the proxy (`{exit, Pid, Reason}',
%% `{link, Pid}', `{unlink, Pid}'), carried out before this returns (or the proxy is gone):
%% the caller's next message to `Pid' is then behind the signal, as the remote process's
%% next message is behind its signal (docs/protocol.md 5.2, "Order"). Called by the
%% connection only; a proxy never waits for its connection, so the wait cannot deadlock.
-spec signal(pid(), reference(), term()) -> ok.
signal(Proxy, Token, Cmd) ->
    Ref = erlang:monitor(process, Proxy),
    Proxy ! {'$fabric_ctl', Token, {signal, Ref, Cmd}},
    receive
        {Ref, signalled} -> erlang:demonitor(Ref, [flush]), ok;
        {'DOWN', Ref, process, _, _} -> ok
    end.

init(Conn, Token, Ctr, Max) ->
    process_flag(trap_exit, true),
    %% the connection's token tags the monitor's message (no reference to keep: a smaller
    %% state, issue 15), which no other process can send
    _ = monitor(process, Conn, [{tag, Token}]),
    idle_timer(Token),
    loop(#s{conn = Conn, token = Token, ctr = Ctr, max = Max}).

loop(#s{conn = Conn, token = Token} = S) ->
    receive
        {'$fabric_ctl', Token, {barrier, N}} ->
            %% (not a use: an idle proxy woken by it hibernates again)
            loop(barrier(N, S));
        {'$fabric_ctl', Token, Cmd} ->
            loop(command(Cmd, busy(S)));
        {'$fabric_send', Token, From, Msg, Deadline} ->
            loop(item({s, From, Msg, Deadline}, busy(S)));
        {'$fabric_expire', Token} ->
            loop(expire(S));
        {'$fabric_idle', Token} ->
            idle(S);
        {Token, _, process, Conn, _} ->
            die(noconnection, S);
        {'EXIT', From, Reason} ->
            loop(exit_signal(From, Reason, busy(S)));
        Msg ->
            loop(item({m, Msg}, busy(S)))
    end.

busy(#s{busy = true} = S) -> S;
busy(S) -> S#s{busy = true}.

idle_timer(Token) ->
    _ = erlang:send_after(?IDLE_MS, self(), {'$fabric_idle', Token}),
    ok.

%% The end of an idle period: a proxy that got a message in it waits another; one that
%% did not hibernates (its next timer starts when it wakes).
idle(#s{busy = true, token = Token} = S) ->
    idle_timer(Token),
    loop(S#s{busy = false});
idle(S) -> hibernate(S).

%% Idle: the stack and heap are dropped and the process sleeps on a heap just the size of
%% what it keeps. With nothing waiting here, that is only what identifies it (its
%% connection, the token, the allowance, the peer's links): the connection's counters and
%% limit are read again from the registry when a message wakes it, which keeps a
%% hibernated proxy under 1 KiB (issue 15; the two monitors, the connection's and ours,
%% cost 64 bytes each of it).
hibernate(#s{conn = Conn, token = T, allow = A, peer_linked = L, q = Q, ctr = Ctr} = S) ->
    case Ctr =/= undefined andalso queue:is_empty(Q) of
        true -> erlang:hibernate(?MODULE, wake, [{Conn, T, A, compact(L)}]);
        false -> erlang:hibernate(?MODULE, wake, [S])
    end.

compact(L) when map_size(L) =:= 0 -> #{};
compact(L) -> L.

%% @doc The loop again, after hibernation (called by erlang:hibernate/3 only). A proxy its
%% connection no longer knows (its registry entry is removed with the command that ends
%% it, already in the mailbox) goes on without the shared counters until that command;
%% the next idle period starts.
-spec wake(#s{} | {pid(), reference(), integer(), #{pid() => true}}) -> no_return().
wake({Conn, Token, Allow, Linked}) ->
    {Ctr, Max} = try fabric_peer_registry:proxy_entry(self()) of
                     {Conn, #{counters := C, max_pending := M}} -> {C, M};
                     _ -> {undefined, 0}
                 catch error:badarg -> {undefined, 0}   % the application is stopping
                 end,
    idle_timer(Token),
    loop(#s{conn = Conn, token = Token, allow = Allow, peer_linked = Linked, ctr = Ctr, max = Max});
wake(#s{token = Token} = S) ->
    idle_timer(Token),
    loop(S).

%% A message or a send request: forwarded within the allowance, or waiting here, or
%% beyond max_pending_messages refused.
item(It, #s{allow = A, q = Q} = S) when A > 0 ->
    case queue:is_empty(Q) of
        true -> forward(It, S), S#s{allow = A - 1};
        false -> wait(It, S)
    end;
item(It, S) -> wait(It, S).

wait(It, #s{ctr = undefined, q = Q} = S) -> S#s{q = queue:in(It, Q)};
wait(It, #s{ctr = Ctr, max = Max, q = Q, conn = Conn} = S) ->
    case counters:get(Ctr, 1) + counters:get(Ctr, 2) >= Max of
        true ->
            case It of
                {m, Msg} -> Conn ! {fabric_proxy_dropped, self(), Msg};
                {s, From, _, _} -> reply(From, {error, overflow})
            end,
            S;
        false ->
            counters:add(Ctr, 1, 1),
            case It of
                {s, _, _, Deadline} ->
                    erlang:send_after(max(0, Deadline - erlang:monotonic_time(millisecond)) + 1,
                                      self(), {'$fabric_expire', S#s.token});
                _ -> ok
            end,
            S#s{q = queue:in(It, Q)}
    end.

forward({m, Msg}, #s{conn = Conn}) -> Conn ! {fabric_proxy_msg, self(), Msg};
forward({s, From, Msg, Deadline}, #s{conn = Conn}) ->
    Conn ! {fabric_proxy_send, self(), From, Msg, Deadline}.

%% The connection gave allowance back: forward what waits, oldest first. Messages of `!'
%% in a row go as one `fabric_proxy_msgs' message (one send and one counter update for up
%% to the whole allowance, issue 15: a stream held back by credit waits here).
release(#s{allow = A} = S) when A =< 0 -> S;
release(#s{allow = A, q = Q, conn = Conn} = S) ->
    case take_msgs(A, Q, [], 0) of
        {[], 0, _} ->
            case queue:out(Q) of
                {{value, It}, Q1} ->
                    uncount(1, S),
                    forward(It, S),
                    release(S#s{allow = A - 1, q = Q1});
                {empty, _} -> S
            end;
        {[Msg], 1, Q1} ->
            uncount(1, S),
            Conn ! {fabric_proxy_msg, self(), Msg},
            release(S#s{allow = A - 1, q = Q1});
        {Rev, K, Q1} ->
            uncount(K, S),
            Conn ! {fabric_proxy_msgs, self(), lists:reverse(Rev)},
            release(S#s{allow = A - K, q = Q1})
    end.

%% A barrier of the connection (an exported process ended, fabric_peer_dead_order): the
%% answer goes after everything that came before it, what waits here for allowance
%% included, handed over now (the allowance falls below 0 and comes back as the connection
%% carries them out). Waiting for the allowance would be waiting for the credit of this
%% proxy's destination, and the DEAD is not held back by credit (docs/protocol.md 12.6).
barrier(N, #s{q = Q, allow = A, conn = Conn} = S) ->
    S1 = case queue:len(Q) of
             0 -> S;
             L -> (release(S#s{allow = L}))#s{allow = A - L}
         end,
    Conn ! {fabric_proxy_barrier, self(), N},
    S1.

%% Up to `A' messages of `!' at the head of the queue (reversed), how many, the rest.
take_msgs(0, Q, Acc, K) -> {Acc, K, Q};
take_msgs(A, Q, Acc, K) ->
    case queue:out(Q) of
        {{value, {m, Msg}}, Q1} -> take_msgs(A - 1, Q1, [Msg | Acc], K + 1);
        _ -> {Acc, K, Q}
    end.

uncount(_, #s{ctr = undefined}) -> ok;
uncount(K, #s{ctr = Ctr}) -> counters:sub(Ctr, 1, K).

%% Send requests still waiting at their deadline: nothing was sent.
expire(#s{q = Q, ctr = Ctr} = S) ->
    Now = erlang:monotonic_time(millisecond),
    {Keep, Gone} = lists:partition(fun({s, _, _, D}) -> D > Now; (_) -> true end, queue:to_list(Q)),
    [reply(From, {error, timeout}) || {s, From, _, _} <- Gone],
    Ctr =:= undefined orelse Gone =:= [] orelse counters:sub(Ctr, 1, length(Gone)),
    S#s{q = queue:from_list(Keep)}.

reply({To, Tag}, R) -> gen:reply({To, Tag}, R).

%% The proxy ends: what still waits here is given to the connection (reported with the
%% session's end, 11.7); waiting send/2 callers get `{error, Reason}' for a connection
%% that ended, `ok' for a remote process that ended (a message to an ended process).
die(Reason, #s{q = Q, ctr = Ctr, conn = Conn}) ->
    Items = queue:to_list(Q),
    R = case Reason of noconnection -> {error, noconnection}; _ -> ok end,
    [reply(From, R) || {s, From, _, _} <- Items],
    case [M || {m, M} <- Items] of
        [] -> ok;
        Msgs when Reason =:= noconnection -> Conn ! {fabric_proxy_unsent, self(), Msgs};
        _ -> ok
    end,
    %% after the report: a connection that ends waits until the count is 0
    Ctr =:= undefined orelse Items =:= [] orelse counters:sub(Ctr, 1, length(Items)),
    exit(Reason).

command({die, Reason}, S) -> die(Reason, S);
command({signal, Ref, Cmd}, #s{conn = Conn} = S) ->
    S1 = command(Cmd, S),
    Conn ! {Ref, signalled},
    S1;
command({allow, N}, #s{allow = A} = S) -> release(S#s{allow = A + N});
command({link, Pid}, #s{peer_linked = L} = S) ->
    %% linking to a process that already ended gives us {'EXIT', Pid, noproc}: handled
    %% as a link death (its DEAD is on its way), since Pid is recorded first
    _ = catch link(Pid),
    S#s{peer_linked = L#{Pid => true}};
command({unlink, Pid}, #s{peer_linked = L} = S) ->
    unlink(Pid),
    S#s{peer_linked = maps:remove(Pid, L)};
command({exit, Pid, Reason}, S) ->
    exit(Pid, Reason),
    S;
command({link_exit, Pid, Reason}, _) ->
    %% the link signal of the remote process's death (a `link_exit' frame): as that process
    %% ended, its stand-in ends too, linked to Pid, so that Pid gets a link signal, `kill'
    %% included, trappable (docs/protocol.md 5.2)
    _ = catch link(Pid),
    exit(Reason);
command(_, S) -> S.

exit_signal(From, Reason, #s{peer_linked = L} = S) when is_map_key(From, L) ->
    %% A link signal removes the link and comes only from a process that has ended: a
    %% signal from a process still linked or still alive is exit/2.
    case linked(From) orelse alive(From) of
        true ->
            report_exit(From, Reason, S),
            S;
        false ->
            S#s{peer_linked = maps:remove(From, L)}
    end;
exit_signal(From, Reason, S) when is_pid(From) ->
    report_exit(From, Reason, S),
    S;
exit_signal(_Port, _Reason, S) ->
    S.

report_exit(From, Reason, #s{conn = Conn}) ->
    Conn ! {fabric_proxy_exit, self(), From, Reason},
    ok.

linked(Pid) ->
    {links, Links} = process_info(self(), links),
    lists:member(Pid, Links).

alive(Pid) when node(Pid) =:= node() -> is_process_alive(Pid);
alive(_) -> false.
