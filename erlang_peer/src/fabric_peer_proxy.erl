%% @doc A proxy: the local stand-in for one remote process (docs/protocol.md section 4.3).
%%
%% Whatever is sent to a proxy is forwarded to its connection process, which sends it as
%% `{m, Id, Payload}'. The proxy ends with the remote process's real exit reason when the
%% DEAD notice arrives, so local links and monitors on it see what they would see on the
%% real process. It traps exits: an exit signal from a process that is still alive is an
%% `exit/2' call aimed at the remote process and is reported to the connection (which sends
%% `exit2'); a signal from a linked process that ended is ignored here, because the remote
%% side learns of that death through the DEAD notice (link signals are never duplicated).
%%
%% This is a plain process, not a behaviour, on purpose: a proxy must forward every term
%% verbatim, including terms shaped like `gen_server' calls or system messages. It is not
%% started with `proc_lib' either: a proxy ending with the remote process's abnormal reason
%% is normal operation and must not produce a crash report. Control messages carry a
%% per-connection token no other process knows.
-module(fabric_peer_proxy).

-export([start/3, control/3]).

%% @doc Start the proxy for remote id `Id' of connection `Conn' (not linked: the
%% connection monitors it, and it monitors the connection).
-spec start(pid(), pos_integer(), reference()) -> pid().
start(Conn, Id, Token) ->
    spawn(fun() -> init(Conn, Id, Token) end).

%% @doc Send a control command to a proxy: `{die, Reason}', `{link, Pid}', `{unlink, Pid}'
%% or `{exit, Pid, Reason}' (the proxy calls `exit(Pid, Reason)', so `Pid' sees the proxy
%% as the sender).
-spec control(pid(), reference(), term()) -> ok.
control(Proxy, Token, Cmd) ->
    Proxy ! {'$fabric_ctl', Token, Cmd},
    ok.

init(Conn, Id, Token) ->
    process_flag(trap_exit, true),
    Ref = monitor(process, Conn),
    put('$fabric_proxy', {Conn, Id}),
    loop(Conn, Ref, Token).

loop(Conn, Ref, Token) ->
    receive
        {'$fabric_ctl', Token, Cmd} ->
            command(Cmd),
            loop(Conn, Ref, Token);
        {'DOWN', Ref, process, Conn, _} ->
            exit(noconnection);
        {'EXIT', From, Reason} ->
            case alive(From) of
                true -> Conn ! {fabric_proxy_exit, self(), From, Reason};
                false -> ok
            end,
            loop(Conn, Ref, Token);
        Msg ->
            Conn ! {fabric_proxy_msg, self(), Msg},
            loop(Conn, Ref, Token)
    end.

command({die, Reason}) -> exit(Reason);
command({link, Pid}) -> catch link(Pid), ok;
command({unlink, Pid}) -> unlink(Pid), ok;
command({exit, Pid, Reason}) -> exit(Pid, Reason), ok;
command(_) -> ok.

alive(Pid) when is_pid(Pid), node(Pid) =:= node() -> is_process_alive(Pid);
alive(Pid) when is_pid(Pid) -> true;
alive(_) -> false.
