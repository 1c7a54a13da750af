%% @doc Public API of erlang_peer: fabric servers and clients (docs/protocol.md).
%%
%% A server accepts any number of clients; each connection speaks the legacy protocol with
%% an original peer and the negotiated extensions with one of ours. A client connection
%% reconnects with capped exponential backoff and, with the `session' feature, keeps its
%% proxies across reconnects. Remote processes appear as local proxy pids: `!', `link/1',
%% `monitor/2' and `exit/2' on a proxy behave as on the real process.
%%
%% Example (the seed's ping):
%% ```
%% {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [ping]}),
%% {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret", #{}),
%% Ping = fabric_peer:whereis(C, ping),
%% Ping ! {self(), {payload, "abababa"}},
%% receive {Ping, {pong, M}} -> M end.
%% '''
%%
%% Servers and clients started with `start_server/3' and `connect/4' live under the
%% application's own supervisors. To put them in your supervision tree instead, use
%% `server_child_spec/4' and `client_child_spec/5' (or call `start_server_link/3' and
%% `connect_link/4' yourself); README "In your supervision tree".
-module(fabric_peer).

-export([start_server/3, stop_server/1, port/1, connect/4, close/1, whereis/2, whereis/3,
         send/2, send_confirmed/2, send_confirmed/3, info/1, allow/2, is_proxy/1, disconnect/1,
         nodes/1, monitor_node/3, register_global/3, unregister_global/2, drain_server/1,
         drain_server/2, join/3, leave/3, members/2]).
-export([start_server_link/3, connect_link/4, server_child_spec/4, client_child_spec/5,
         server/1, exit/2]).
-compile({no_auto_import, [exit/2]}).
%% the public API: called by the applications that use fabric_peer, not from inside it
-ignore_xref([start_server/3, stop_server/1, port/1, connect/4, close/1, whereis/2, whereis/3,
              send/2, send_confirmed/2, send_confirmed/3, info/1, allow/2, is_proxy/1,
              disconnect/1, nodes/1, monitor_node/3, register_global/3, unregister_global/2,
              drain_server/1, drain_server/2, join/3, leave/3, members/2, start_server_link/3, connect_link/4,
              server_child_spec/4, client_child_spec/5, server/1, exit/2]).

-export_type([server/0, conn/0, dest/0]).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-opaque server() :: {fabric_peer_server, reference(), pid()}.
-type conn() :: pid().
-type dest() :: pid() | {conn(), atom()} | {conn(), {atom(), atom()}}.

%% @doc Start a server on `Port' (0: the OS picks one; see `port/1').
%%
%% Options (a map; unknown keys are refused): `allowed' ([atom()], names reachable from the
%% network, default []), `allow_legacy_auth' (default false), `max_frame' (bytes, default
%% 64 MiB), `max_handshake_frame' (16 KiB), `handshake_timeout' (ms, 10000),
%% `session_timeout' (ms, 60000), `max_new_atoms' (per connection, 1000),
%% `max_server_atoms' (50000), `ip' (default {127,0,0,1}), `force_system_names' ([atom()]),
%% `routable_nodes' ([atom()]), `features' (subset of the version 1 features to offer),
%% `heartbeat' (ms, 15000, 0 = none), `node' (name announced, default `node()'),
%% `max_errors' (20), `error_window' (200), `acceptors' (4), `tls' (false or a list of
%% `ssl' server options: the whole protocol then runs over TLS), `mode' (`extended', or
%% `legacy': a server that behaves on the wire exactly like the original 2010 server, the
%% legacy handshake whatever the hello says and only legacy frames; needs
%% `allow_legacy_auth => true'), `max_proxies' / `max_exports' (100000 per connection),
%% `max_kept_sessions' (1024), `max_auth_failures' (5, 0 = no throttling),
%% `auth_failure_window' / `auth_block_time' (60000 ms), `max_terms' (2000000 per payload),
%% `max_connections' (4096) / `max_pending' (256) / `max_pending_per_address' (64),
%% `refuse_remote_exits' (false, true or [atom()]), `routing' (false, true or a fun of
%% arity 2 taking the sending and the target client node names as binaries, `undefined' for
%% a client without one: clients reach each other's allowed names by node, README
%% "Routing"), `route_heartbeat' (1000 ms), `route_grace' (10000 ms), `route_max_proxies'
%% (10000 per client connection), `cluster' (false, or the atom naming the `pg' scope of a
%% cluster of servers on connected Erlang nodes; needs `routing': docs/cluster.md),
%% `register_global' (false, true or [atom()]: the names a client may register globally
%% through this server, docs/protocol.md 17). TLS options get safe defaults
%% (TLS 1.2+ only; README "Security options").
-spec start_server(inet:port_number(), iodata(), map()) -> {ok, server()} | {error, term()}.
start_server(Port, Secret, Opts) ->
    case server_ctx(Port, Secret, Opts) of
        {ok, #{ref := Ref} = Ctx} ->
            case supervisor:start_child(fabric_peer_servers_sup, [Ctx]) of
                {ok, Sup} -> {ok, {fabric_peer_server, Ref, Sup}};
                {error, Why} -> {error, unwrap(Why)}
            end;
        {error, _} = E -> E
    end.

%% @doc `start_server/3' for your own supervisor: the server (a supervisor process, the pid
%% returned) is linked to the caller and is not under `fabric_peer''s supervisors. Its
%% handle for `port/1', `info/1', `allow/2' is `server(Pid)'. Each start is a new server:
%% a restarted one listens again on `Port' (with port 0, on a new port the OS picks).
%% The `fabric_peer' application must be running (list it in your application's
%% `applications'; it is started here otherwise).
-spec start_server_link(inet:port_number(), iodata(), map()) -> {ok, pid()} | {error, term()}.
start_server_link(Port, Secret, Opts) ->
    case server_ctx(Port, Secret, Opts) of
        {ok, Ctx} ->
            case fabric_peer_listener_sup:start_link(Ctx) of
                {ok, Sup} -> {ok, Sup};
                {error, Why} -> {error, unwrap(Why)}
            end;
        {error, _} = E -> E
    end.

%% @doc A child spec for a server under your supervisor (`start_server_link/3'): a
%% permanent `supervisor' child, `shutdown => infinity' (its connections close first).
-spec server_child_spec(term(), inet:port_number(), iodata(), map()) -> supervisor:child_spec().
server_child_spec(Id, Port, Secret, Opts) ->
    #{id => Id, start => {?MODULE, start_server_link, [Port, Secret, Opts]},
      restart => permanent, type => supervisor, shutdown => infinity,
      modules => [fabric_peer_listener_sup]}.

%% @doc The handle of a server started with `start_server_link/3', from its pid.
-spec server(pid()) -> server().
server(Sup) when is_pid(Sup) ->
    [Keeper] = [P || {handle, P, _, _} <- supervisor:which_children(Sup), is_pid(P)],
    {fabric_peer_server, fabric_peer_server_handle:ref(Keeper), Sup}.

server_ctx(Port, Secret, Opts) when is_integer(Port), Port >= 0, Port < 65536 ->
    ok = ensure_started(Opts),
    case fabric_peer_opts:normalize(server, Secret, Opts) of
        {ok, O} ->
            {ok, O#{ref => make_ref(), port => Port, transport => transport(O),
                    server_atoms => atomics:new(1, [])}};
        {error, _} = E -> E
    end;
server_ctx(Port, _, _) -> {error, {bad_port, Port}}.

%% @doc Stop a server: its listener closes and its connections end (their proxies exit
%% with `noconnection'). A server of `start_server_link/3' is stopped with reason
%% `shutdown' (a permanent child of your supervisor is then restarted: use
%% `supervisor:terminate_child/2' to stop it for good).
-spec stop_server(server()) -> ok.
stop_server({fabric_peer_server, _Ref, Sup}) ->
    case supervisor:terminate_child(fabric_peer_servers_sup, Sup) of
        ok -> ok;
        {error, not_found} ->
            try proc_lib:stop(Sup, shutdown, infinity)
            catch exit:_ -> ok
            end
    end.

%% @doc `drain_server/2' keeping the sessions.
-spec drain_server(server()) -> ok.
drain_server(Server) -> drain_server(Server, #{}).

%% @doc Drain a server (docs/cluster.md section 6): it stops accepting (its listening
%% socket closes) and closes the sessions' sockets as a network failure would; clients
%% with `fallbacks' reconnect to their next server, which (servers of one cluster) relays
%% each to its session here: proxies keep their identity and, with acks, nothing is lost.
%% The sessions stay here until they end (their clients close, or `stop_server/1'). A
%% connection without a session, or in its handshake, ends; the relays this server carries
%% for the sessions of other servers are closed (their clients resume again elsewhere).
%% With `#{sessions => close}' the sessions end too: their clients get a new session at
%% their next server and their proxies end with `noconnection'. Returns `ok' when done;
%% the server stays started.
-spec drain_server(server(), #{sessions => keep | close}) -> ok.
drain_server({fabric_peer_server, Ref, Sup}, Opts) ->
    Keep = maps:get(sessions, Opts, keep) =:= keep,
    _ = supervisor:terminate_child(Sup, acceptors_sup),
    _ = [fabric_peer_cluster:drain(Pid)
         || {cluster, Pid, _, _} <- supervisor:which_children(Sup), is_pid(Pid)],
    case fabric_peer_registry:conn_sup(Ref) of
        undefined -> ok;
        ConnSup ->
            _ = [drain_conn(ConnSup, Pid, Keep)
                 || {_, Pid, _, _} <- supervisor:which_children(ConnSup), is_pid(Pid)],
            ok
    end.

drain_conn(ConnSup, Pid, Keep) ->
    case Keep andalso (catch fabric_peer_conn:info(Pid)) of
        #{state := established, session := true} -> _ = fabric_peer_conn:drop_connection(Pid), ok;
        #{state := State} when State =:= detached; State =:= resuming -> ok;
        _ -> _ = supervisor:terminate_child(ConnSup, Pid), ok
    end.

%% @doc The port a server listens on.
-spec port(server()) -> inet:port_number().
port({fabric_peer_server, Ref, _}) ->
    P = fabric_peer_registry:port(Ref),
    true = is_integer(P),
    P.

%% @doc Connect to a fabric server. Returns once the first handshake has completed; a
%% failure of the first attempt is returned (`{error, {auth_failed, Why}}',
%% `{error, {connect, econnrefused}}', ...). Later losses reconnect automatically.
%%
%% Options: as for `start_server/3' (`allowed' is what the server side may reach here by
%% name), plus `mode' (`extended' (default) or `legacy': speak exactly as an original
%% client), `reconnect' (default true), `reconnect_min' / `reconnect_max' (backoff bounds in
%% ms, 100 / 30000), `connect_timeout' (5000), `max_queue' (messages queued while
%% reconnecting, 1000; 0 refuses them with `{error, not_connected}'), `tls' (false or a list
%% of `ssl' client options), `fallbacks' (`[{Host, Port}]', other servers of a cluster:
%% the first attempt tries each once, in order; a reconnection tries the server of the last
%% connection first, then the others, one round per attempt with the backoff between
%% rounds, docs/cluster.md section 6).
%%
%% The connection is owned by the caller: it is monitored, and when the owner exits the
%% connection closes (its proxies exit with `noconnection'). `close_with_owner => false'
%% keeps it open until `close/1'. The connection runs under `fabric_peer''s supervisor; see
%% `connect_link/4' for your own.
-spec connect(inet:hostname() | inet:ip_address() | binary(), inet:port_number(), iodata(), map()) ->
          {ok, conn()} | {error, term()}.
connect(Host, Port, Secret, Opts) ->
    start_client(fun(Ctx, Target) -> supervisor:start_child(fabric_peer_clients_sup, [Ctx, Target]) end,
                 Host, Port, Secret, Opts).

%% @doc `connect/4' for your own supervisor: the connection process is linked to the caller
%% (which also owns it, as in `connect/4') and is not under `fabric_peer''s supervisors.
%% It returns once the first handshake completed, or its failure, like `connect/4'.
%% When the connection stops for good (`reconnect => false' and the socket lost, or
%% authentication refused on a reconnect) it exits with `normal'.
-spec connect_link(inet:hostname() | inet:ip_address() | binary(), inet:port_number(), iodata(), map()) ->
          {ok, conn()} | {error, term()}.
connect_link(Host, Port, Secret, Opts) ->
    start_client(fun fabric_peer_client:start_link/2, Host, Port, Secret, Opts).

%% @doc A child spec for a client connection under your supervisor (`connect_link/4'): a
%% permanent worker, `shutdown => 5000' (what was written is acknowledged first, as in
%% `close/1'). Start it after the server it connects to: a failed first attempt fails the
%% child's start.
-spec client_child_spec(term(), inet:hostname() | inet:ip_address() | binary(), inet:port_number(),
                        iodata(), map()) -> supervisor:child_spec().
client_child_spec(Id, Host, Port, Secret, Opts) ->
    #{id => Id, start => {?MODULE, connect_link, [Host, Port, Secret, Opts]},
      restart => permanent, type => worker, shutdown => 5000, modules => [fabric_peer_client]}.

start_client(Start, Host0, Port, Secret, Opts) ->
    ok = ensure_started(Opts),
    Host = case Host0 of
               B when is_binary(B) -> binary_to_list(B);
               H -> H
           end,
    case fabric_peer_opts:normalize(client, Secret, Opts) of
        {ok, O} ->
            warn_unverified(Host, Port, maps:get(tls, O)),
            Ref = make_ref(),
            ok = fabric_peer_registry:init_handle(Ref, #{policy => policy(O)}),
            case Start(O#{ref => Ref, owner => self()}, {Host, Port}) of
                {ok, Pid} ->
                    Timeout = maps:get(connect_timeout, O) + maps:get(handshake_timeout, O) + 2000,
                    try fabric_peer_conn:await_ready(Pid, Timeout) of
                        ok -> {ok, Pid};
                        {error, _} = E -> unlinked(Pid, E)
                    catch exit:_ ->
                            fabric_peer_conn:close(Pid),
                            unlinked(Pid, {error, closed})
                    end;
                {error, Why} ->
                    forget(Ref),
                    {error, Why}
            end;
        {error, _} = E -> E
    end.

%% A first attempt failed and the connection process ends: a caller of connect_link/4 that
%% traps exits gets no stray 'EXIT' for it.
unlinked(Pid, Result) ->
    true = unlink(Pid),
    receive {'EXIT', Pid, _} -> ok after 0 -> ok end,
    Result.

%% @doc Close a client connection (or one server-side connection). Its proxies exit with
%% `noconnection'.
-spec close(conn()) -> ok.
close(Conn) when is_pid(Conn) -> fabric_peer_conn:close(Conn).

%% @doc `whereis/3' with a 10 s timeout.
-spec whereis(conn(), atom() | binary() | string()) -> pid() | undefined | {error, term()}.
whereis(Conn, Name) -> whereis(Conn, Name, 10000).

%% @doc Ask the peer for one of its registered names (extension `whereis'). Returns a local
%% proxy pid usable like any pid, or `undefined' when the name is not registered there or not
%% allowed by its policy (the two look the same). With a legacy (original) peer, which has no
%% way to answer, it returns `{error, not_supported'}; while reconnecting `{error, not_connected}'.
-spec whereis(conn(), atom() | binary() | string() | {atom(), atom()}, timeout()) ->
          pid() | undefined | {error, term()}.
whereis(Conn, {Name, Node}, Timeout) when is_atom(Name), is_atom(Node) ->
    %% a name at another client of a routing server (`route'), or at the server's own node
    route_call(Conn, {whereis, Name, Node}, Timeout);
whereis(Conn, Name, Timeout) ->
    try fabric_peer_conn:whereis(Conn, Name, Timeout)
    catch exit:{timeout, _} -> {error, timeout};
          exit:_ -> {error, not_connected}
    end.

%% @doc The client nodes of a routing server this client may see (its own and the
%% server's not included), asked now; `{error, not_supported}' when the server did not
%% agree on `route', `{error, not_connected}' while reconnecting.
-spec nodes(conn()) -> [node()] | {error, term()}.
nodes(Conn) -> route_call(Conn, nodes, 10000).

%% @doc Like `erlang:monitor_node/2' for a client node of a routing server: with `true'
%% the caller receives `{nodedown, Node}' once when `Node' goes down (at once if it is not
%% up), also when this connection's session ends or it is closed; `false' removes the
%% caller's monitors of `Node'. `{error, not_supported}' without `route'.
-spec monitor_node(conn(), node(), boolean()) -> ok | {error, term()}.
monitor_node(Conn, Node, Flag) when is_atom(Node), is_boolean(Flag) ->
    route_call(Conn, {monitor_node, self(), Node, Flag}, 10000).

%% @doc Register the local process `Pid' under the `global' name `Name' through the
%% server of client connection `Conn' (docs/protocol.md 17, docs/cluster.md section 5):
%% the server registers its proxy for `Pid', so the name reaches `Pid' from anywhere in the
%% server's Erlang cluster (and from clients of servers that allow the name). The name
%% ends with `Pid' or with the connection's session. `ok' (also when `Pid' already holds
%% it), `{error, {name_in_use, Name}}', `{error, not_allowed}' (the server's
%% `register_global' refuses it), `{error, limit}', `{error, noproc}',
%% `{error, not_supported}' (the server does not offer `global'), `{error, not_connected}'.
-spec register_global(conn(), atom(), pid()) -> ok | {error, term()}.
register_global(Conn, Name, Pid) when is_atom(Name), is_pid(Pid) ->
    case global_call(Conn, {register, Name, Pid}) of
        {error, in_use} -> {error, {name_in_use, Name}};
        R -> R
    end.

%% @doc Remove a `global' name that `register_global/3' gave one of this connection's
%% processes: `ok', or `{error, not_registered}' when this client does not hold it.
-spec unregister_global(conn(), atom()) -> ok | {error, term()}.
unregister_global(Conn, Name) when is_atom(Name) -> global_call(Conn, {unregister, Name}).

%% @doc Join the local process `Pid' to the cluster's `pg' group `Group' (a binary, or an
%% atom naming the same group) through the server of `Conn' (docs/protocol.md 18): the
%% server joins its proxy for `Pid' to `{fabric_peer_group, GroupBin}' of its scope, so the
%% membership ends with `Pid' or the connection's session. `ok', `{error, not_allowed}'
%% (the server's `client_groups'), `{error, limit}' (64 groups), `{error, noproc}',
%% `{error, not_supported}', `{error, not_connected}'.
-spec join(conn(), binary() | atom(), pid()) -> ok | {error, term()}.
join(Conn, Group, Pid) when is_pid(Pid) -> global_call(Conn, {pg, {join, group(Group), Pid}}).

%% @doc Take `Pid' out of group `Group': `ok' or `{error, not_member}' (and as `join/3').
-spec leave(conn(), binary() | atom(), pid()) -> ok | {error, term()}.
leave(Conn, Group, Pid) when is_pid(Pid) -> global_call(Conn, {pg, {leave, group(Group), Pid}}).

%% @doc The members of group `Group' on every node of the cluster (at most 1000): proxies,
%% and the caller's own processes as themselves. `{ok, Pids}' or `{error, _}' as `join/3'.
-spec members(conn(), binary() | atom()) -> {ok, [pid()]} | {error, term()}.
members(Conn, Group) -> global_call(Conn, {pg, {members, group(Group)}}).

group(G) when is_atom(G) -> atom_to_binary(G, utf8);
group(G) when is_binary(G) -> G.

global_call(Conn, Cmd) ->
    try gen_statem:call(Conn, {fabric_global, Cmd}, 10000)
    catch exit:{timeout, _} -> {error, timeout};
          exit:_ -> {error, not_connected}
    end.

route_call(Conn, Cmd, Timeout) ->
    try gen_statem:call(Conn, {fabric_route, Cmd}, Timeout)
    catch exit:{timeout, _} -> {error, timeout};
          exit:_ -> {error, not_connected}
    end.

%% @doc Send a message. `Dest' is a pid (a proxy: the message goes over its connection and
%% errors are returned, e.g. `{error, {unsupported, map}}' for a legacy peer or
%% `{error, {frame_too_large, Size, Limit}}'; a plain local pid: `!'), `{Conn, Name}' or
%% `{Conn, {Name, Node}}' for a name registered on the peer. Plain `Proxy ! Msg' works
%% too; its errors are logged and counted in `info/1' (`local_errors').
-spec send(dest(), term()) -> ok | {error, term()}.
send(Pid, Msg) when is_pid(Pid) ->
    case fabric_peer_registry:proxy_entry(Pid) of
        undefined -> Pid ! Msg, ok;
        {Conn, Shared} -> proxy_send(Conn, Pid, Shared, Msg)
    end;
send({Conn, Name}, Msg) when is_pid(Conn), is_atom(Name) -> call_send(Conn, Name, Msg);
send({Conn, {Name, Node}}, Msg) when is_pid(Conn), is_atom(Name), is_atom(Node) ->
    call_send(Conn, {Name, Node}, Msg);
send(Dest, _) -> error({badarg, Dest}).

%% @doc `erlang:exit(Proxy, Reason)' with an answer: `ok' once the signal is on its way (the
%% caller is its sender, as with `erlang:exit/2'); `{error, not_supported}' when the peer
%% cannot receive exit signals (an original peer, or one that did not agree on `link'):
%% nothing is done then, the proxy lives on even for `kill'. `{error, not_a_proxy}' for a
%% pid that is not a proxy, `{error, not_connected}' while reconnecting. A plain
%% `erlang:exit/2' on a proxy of such a peer is logged (`exit_not_supported') and counted in
%% `info/1' (`local_errors'); with `kill' the proxy dies and the peer's next reference to
%% that process gets a new proxy (README "Links and exit signals").
-spec exit(pid(), term()) -> ok | {error, not_supported | not_a_proxy | not_connected}.
exit(Proxy, Reason) when is_pid(Proxy) ->
    case fabric_peer_registry:proxy_conn(Proxy) of
        undefined -> {error, not_a_proxy};
        Conn ->
            try fabric_peer_conn:info(Conn) of
                #{state := established, mode := extended, features := F} ->
                    case lists:member(<<"link">>, F) of
                        true -> erlang:exit(Proxy, Reason), ok;
                        false -> {error, not_supported}
                    end;
                #{state := established} -> {error, not_supported};
                #{} -> {error, not_connected}
            catch exit:_ -> {error, not_connected}
            end
    end.

%% @doc `send_confirmed/3' with a 5 s timeout.
-spec send_confirmed(dest(), term()) -> ok | {error, term()}.
send_confirmed(Dest, Msg) -> send_confirmed(Dest, Msg, 5000).

%% @doc Send a message and wait until the peer says it was put in the destination's
%% mailbox (docs/protocol.md 11.8, the `acks' feature): `ok', or `{error, Code}' with the
%% peer's reason (`noproc', `not_allowed', `unknown_id', `bad_payload', `limit'), or
%% `{error, timeout}' after `Timeout' ms (the message may still be delivered), or
%% `{error, not_supported}' when the peer did not agree on `acks' (nothing is sent). If the
%% session ends first: `{error, session_expired | not_resumable | closed}'. `Dest' as for
%% `send/2' (a proxy, `{Conn, Name}', `{Conn, {Name, Node}}').
-spec send_confirmed(dest(), term(), timeout()) -> ok | {error, term()}.
send_confirmed(Pid, Msg, Timeout) when is_pid(Pid) ->
    case fabric_peer_registry:proxy_conn(Pid) of
        undefined -> {error, not_a_proxy};
        Conn -> call_confirmed(Conn, Pid, Msg, Timeout)
    end;
send_confirmed({Conn, Name}, Msg, Timeout) when is_pid(Conn), is_atom(Name) ->
    call_confirmed(Conn, Name, Msg, Timeout);
send_confirmed({Conn, {Name, Node}}, Msg, Timeout) when is_pid(Conn), is_atom(Name), is_atom(Node) ->
    call_confirmed(Conn, {Name, Node}, Msg, Timeout);
send_confirmed(Dest, _, _) -> error({badarg, Dest}).

call_confirmed(Conn, Dest, Msg, Timeout) ->
    try fabric_peer_conn:send_confirmed(Conn, Dest, Msg, Timeout)
    catch exit:_ -> {error, not_connected}
    end.

%% `[alias | Mon]' is the reply tag of a gen call (OTP's, improper on purpose)
-dialyzer({no_improper_lists, [proxy_send/4]}).

%% Through the proxy, so that it keeps its order with the proxy's `!' messages
%% (docs/protocol.md 12.6); the proxy or the connection answers by the deadline.
proxy_send(Conn, Proxy, #{token := Token, send_timeout := T}, Msg) ->
    Mon = erlang:monitor(process, Conn, [{alias, demonitor}]),
    Tag = [alias | Mon],
    ok = fabric_peer_proxy:request(Proxy, Token, {self(), Tag}, Msg,
                                   erlang:monotonic_time(millisecond) + T),
    receive
        {Tag, Reply} -> erlang:demonitor(Mon, [flush]), Reply;
        {'DOWN', Mon, process, _, _} -> {error, not_connected}
    after T + 2000 ->
            erlang:demonitor(Mon, [flush]),
            receive {Tag, Reply} -> Reply after 0 -> {error, timeout} end
    end.

call_send(Conn, Dest, Msg) ->
    try fabric_peer_conn:send(Conn, Dest, Msg)
    catch exit:_ -> {error, not_connected}
    end.

%% @doc Statistics. For a connection: `mode' (legacy | extended | none before the
%% handshake), `features', `proxies', `exported', `frames_in', `frames_out', `messages_in',
%% `messages_out' (messages delivered here / written or queued for the peer), `errors',
%% `local_errors', `state', `session', ... For a server: `port', `connections' and the
%% same counters summed over its connections, `relays' (the clients whose sessions live at
%% another server of its cluster that it relays, docs/cluster.md 6: counted against its
%% `max_connections', not in `connections'), plus `conns' (one map per connection).
-spec info(server() | conn()) -> map().
info({fabric_peer_server, Ref, _}) ->
    Conns = case fabric_peer_registry:conn_sup(Ref) of
                undefined -> [];
                Sup ->
                    [I || {_, Pid, _, _} <- supervisor:which_children(Sup), is_pid(Pid),
                          I <- [catch fabric_peer_conn:info(Pid)], is_map(I)]
            end,
    Sum = fun(K) -> lists:sum([maps:get(K, C, 0) || C <- Conns]) end,
    Established = [C || C <- Conns, maps:get(state, C) =:= established],
    #{port => fabric_peer_registry:port(Ref),
      connections => length(Established),
      processes => length(Conns),
      detached_sessions => length([C || C <- Conns, maps:get(state, C) =:= detached]),
      proxies => Sum(proxies), exported => Sum(exported), frames_in => Sum(frames_in),
      frames_out => Sum(frames_out), messages_in => Sum(messages_in),
      messages_out => Sum(messages_out), errors => Sum(errors), new_atoms => Sum(new_atoms),
      modes => lists:usort([maps:get(mode, C) || C <- Established]),
      relays => fabric_peer_registry:relays(Ref),
      conns => Conns};
info(Conn) when is_pid(Conn) -> fabric_peer_conn:info(Conn).

%% @doc Add names to the allowed set of a server (all its connections) or of a client
%% connection. System names stay refused unless forced at start.
-spec allow(server() | conn(), [atom()]) -> ok.
allow({fabric_peer_server, Ref, _}, Names) ->
    {Allowed, Forced} = fabric_peer_registry:allowed(Ref),
    New = lists:usort(Allowed ++ Names),
    fabric_peer_registry:set_allowed(Ref, {New, Forced}, fabric_peer_policy:new(New, Forced));
allow(Conn, Names) when is_pid(Conn) -> fabric_peer_conn:allow(Conn, Names).

%% @doc Drop a connection's socket as if the network failed: a client reconnects (and
%% resumes its session), a server-side connection with a session keeps it for
%% `session_timeout'. For tests and operational drills.
-spec disconnect(conn()) -> ok | {error, not_connected}.
disconnect(Conn) when is_pid(Conn) -> fabric_peer_conn:drop_connection(Conn).

%% @doc True when `Pid' is a proxy for a remote process.
-spec is_proxy(pid()) -> boolean().
is_proxy(Pid) when is_pid(Pid) ->
    fabric_peer_registry:is_proxy(Pid).

%%% internals

warn_unverified(Host, Port, Tls) when is_list(Tls) ->
    case proplists:get_value(verify, Tls) of
        verify_none ->
            ?LOG_WARNING(#{what => tls_unverified, host => Host, port => Port,
                           text => "TLS connection without verifying the server ({verify, "
                                   "verify_none}): anyone on the path can impersonate it"},
                         ?FABRIC_LOG);
        _ -> ok
    end;
warn_unverified(_, _, _) -> ok.

ensure_started(Opts) ->
    {ok, _} = application:ensure_all_started(fabric_peer),
    case maps:get(tls, Opts, false) of
        false -> ok;
        _ -> {ok, _} = application:ensure_all_started(ssl), ok
    end.

transport(#{tls := false}) -> tcp;
transport(#{tls := Opts}) -> {tls, Opts}.

policy(O) -> fabric_peer_policy:new(maps:get(allowed, O), maps:get(force_system_names, O)).

forget(Ref) -> fabric_peer_registry:forget(Ref).

unwrap({shutdown, {failed_to_start_child, _, Why}}) -> unwrap(Why);
unwrap({failed_to_start_child, _, Why}) -> unwrap(Why);
unwrap({listen_failed, Why}) -> Why;
unwrap(Why) -> Why.
