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
%% This is a plain process, not a behaviour, on purpose: a proxy must forward every term
%% verbatim, including terms shaped like `gen_server' calls or system messages. It is not
%% started with `proc_lib' either: a proxy ending with the remote process's abnormal reason
%% is normal operation and must not produce a crash report. Control messages carry a
%% per-connection token no other process knows.
-module(fabric_peer_proxy).

-export([start/3, control/3]).

-record(s, {conn :: pid(), ref :: reference(), token :: reference(),
            %% local processes linked to this proxy because the peer sent {link, A, B}
            peer_linked = #{} :: #{pid() => true}}).

%% @doc Start the proxy for remote id `Id' of connection `Conn' (not linked: the
%% connection monitors it, and it monitors the connection). The proxy itself does not need
%% `Id': the connection maps it to the proxy.
-spec start(pid(), pos_integer(), reference()) -> pid().
start(Conn, _Id, Token) ->
    spawn(fun() -> init(Conn, Token) end).

%% @doc Send a control command to a proxy: `{die, Reason}', `{link, Pid}', `{unlink, Pid}',
%% `{exit, Pid, Reason}' (the proxy calls `exit(Pid, Reason)', so `Pid' sees the proxy
%% as the sender) or `{link_exit, Pid, Reason}' (the proxy links to `Pid' and ends with
%% `Reason').
-spec control(pid(), reference(), term()) -> ok.
control(Proxy, Token, Cmd) ->
    Proxy ! {'$fabric_ctl', Token, Cmd},
    ok.

init(Conn, Token) ->
    process_flag(trap_exit, true),
    Ref = monitor(process, Conn),
    loop(#s{conn = Conn, ref = Ref, token = Token}).

loop(#s{conn = Conn, ref = Ref, token = Token} = S) ->
    receive
        {'$fabric_ctl', Token, Cmd} ->
            loop(command(Cmd, S));
        {'DOWN', Ref, process, Conn, _} ->
            exit(noconnection);
        {'EXIT', From, Reason} ->
            loop(exit_signal(From, Reason, S));
        Msg ->
            Conn ! {fabric_proxy_msg, self(), Msg},
            loop(S)
    end.

command({die, Reason}, _) -> exit(Reason);
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
