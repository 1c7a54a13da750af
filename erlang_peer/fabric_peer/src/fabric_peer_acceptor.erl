%% @doc An acceptor: accepts connections and hands each socket to a new connection process
%% under the server's `fabric_peer_conn_sup'. It does nothing else (no reads, no
%% handshake), so a slow or hostile client never blocks accepting. Before the connection
%% process starts, `fabric_peer_admission' makes room (or refuses the socket) according to
%% the server's connection limits.
-module(fabric_peer_acceptor).

-export([start_link/2, init/3]).
%% started by its child spec; init/3 is the proc_lib entry point
-ignore_xref([start_link/2, init/3]).

%% @doc Start an acceptor on a listening socket.
-spec start_link(map(), term()) -> {ok, pid()}.
start_link(Ctx, LSock) ->
    {ok, proc_lib:spawn_link(?MODULE, init, [self(), Ctx, LSock])}.

%% @private
-spec init(pid(), map(), term()) -> no_return().
init(_Parent, Ctx, LSock) -> loop(Ctx, LSock).

loop(#{ref := Ref, transport := T} = Ctx, LSock) ->
    case fabric_peer_transport:accept(T, LSock) of
        {ok, Sock} ->
            ConnSup = fabric_peer_registry:conn_sup(Ref),
            Ip = case fabric_peer_transport:peer_ip(T, Sock) of {ok, A} -> A; error -> undefined end,
            %% the relays of a clustered server hold sockets too (docs/cluster.md 6)
            Conns = proplists:get_value(active, supervisor:count_children(ConnSup), 0)
                + fabric_peer_registry:relays(Ref),
            case fabric_peer_admission:admit(Ctx, Ip, Conns) of
                ok -> start(Ctx, ConnSup, T, Sock, Ip);
                refuse -> fabric_peer_transport:close(T, Sock)
            end,
            loop(Ctx, LSock);
        {error, closed} ->
            exit(normal);
        {error, _Other} ->
            %% e.g. emfile: back off briefly instead of spinning
            timer:sleep(100),
            loop(Ctx, LSock)
    end.

start(Ctx, ConnSup, T, Sock, Ip) ->
    case fabric_peer_conn_sup:start_conn(ConnSup, Sock) of
        {ok, Pid} ->
            ok = fabric_peer_admission:pending(Ctx, Pid, Ip),
            case fabric_peer_transport:controlling_process(T, Sock, Pid) of
                ok -> fabric_peer_conn:socket_ready(Pid);
                {error, _} -> fabric_peer_transport:close(T, Sock)
            end;
        _ ->
            fabric_peer_transport:close(T, Sock)
    end.
