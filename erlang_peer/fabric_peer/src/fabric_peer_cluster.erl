%% @doc Servers of one fabric on connected Erlang nodes (docs/cluster.md, issue 14): the
%% `cluster' option of a routing server. The client node names of every clustered server
%% form one directory in a `pg' scope, so that the routing of docs/protocol.md 16 works
%% across servers; between servers, messages are plain Erlang messages between connection
%% processes, over distribution.
%%
%% The directory (docs/cluster.md section 3), groups of the scope:
%% <ul>
%% <li>`{fabric_peer_node, NodeBin}': the server-side connection process holding the client
%%   node name (connected, or its session kept);</li>
%% <li>`{fabric_peer_up, NodeBin}': the same process while its client is connected;</li>
%% <li>`{fabric_peer_session, SessionId}': the server-side connection process that owns a
%%   session (so that a client resuming it at another server is relayed to it:
%%   `fabric_peer_cluster_relay');</li>
%% <li>`fabric_peer_servers': one process of this module per clustered server.</li>
%% </ul>
%% The connection processes join and leave their groups themselves (`up/2', `down/2'; `pg'
%% removes them when they end); they remember the name they joined with in their process
%% dictionary (`{fabric_peer_cluster, joined}'), so a resumed session that renamed its
%% client leaves the old groups. The process of this module (one per clustered server, a
%% child of the server's `fabric_peer_listener_sup') owns or uses the scope, monitors it and
%% tells the server's own clients `nodeup' / `nodedown' for the clients of other servers.
%% A server with `cluster => false' calls none of this (every function is a no-op for it).
-module(fabric_peer_cluster).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([child_specs/1, start_link/1, check/1,
         claim/3, up/2, down/2, target/4, visible/3, grace/2, whereis_name/1,
         session/2, session_owner/2, relay/1, drain/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).
%% start_link/1: by its child spec (child_specs/1)
-ignore_xref([start_link/1]).

-define(SERVERS, fabric_peer_servers).
-define(JOINED, {fabric_peer_cluster, joined}).

%%% options and the server's supervision tree

%% @doc Check the `cluster' option against the other settings of a server (called by
%% `fabric_peer_opts'): `cluster' is an atom (the `pg' scope) or `false', and needs
%% `routing'; `client_groups' (docs/protocol.md 18.1) needs `cluster'.
-spec check(map()) -> ok.
check(#{cluster := false, client_groups := G}) when G =/= false ->
    throw({bad_option, {client_groups, needs_cluster}});
check(#{cluster := false}) -> ok;
check(#{cluster := Scope, routing := Routing}) when is_atom(Scope) ->
    Routing =/= false orelse throw({bad_option, {cluster, needs_routing}}),
    ok;
check(#{cluster := Other}) -> throw({bad_option, {cluster, Other}});
check(_) -> ok.

%% @doc The children a server adds to its `fabric_peer_listener_sup' (before its
%% connections): this module's process when the server is clustered.
-spec child_specs(map()) -> [supervisor:child_spec()].
child_specs(#{cluster := Scope} = Ctx) when Scope =/= false ->
    [#{id => cluster, start => {?MODULE, start_link, [Ctx]}, shutdown => 5000}];
child_specs(_) -> [].

%% @doc Start the cluster process of a server (its settings map).
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Ctx) -> gen_server:start_link(?MODULE, Ctx, []).

%%% the directory, used by the connection processes of a clustered server

%% @doc Frame 4 of a client announcing `Node' (docs/cluster.md section 3): refused when the
%% name is connected at another server; a session kept for it at another server ends.
-spec claim(map(), binary(), pid()) -> ok | node_in_use.
claim(#{cluster := false}, _, _) -> ok;
claim(#{cluster := Scope}, Node, Claimant) ->
    case foreign(Scope, {fabric_peer_up, Node}, Claimant) of
        [_ | _] -> node_in_use;
        [] ->
            Kept = foreign(Scope, {fabric_peer_node, Node}, Claimant),
            _ = [begin
                     ?LOG_INFO(#{what => cluster_session_replaced, node => Node, session => Pid,
                                 text => "the client node reconnected at another server: its "
                                         "kept session there ends"}, ?FABRIC_LOG),
                     gen_statem:cast(Pid, expire_session)
                 end || Pid <- Kept],
            ok
    end.

%% @doc The calling connection process holds `Node' (or no name: `undefined') and its
%% client is connected: it is in the directory.
-spec up(map(), binary() | undefined) -> ok.
up(#{cluster := false}, _) -> ok;
up(#{cluster := Scope}, Node) ->
    case get(?JOINED) of
        Old when Old =/= undefined, Old =/= Node -> leave(Scope, Old);   % renamed
        _ -> ok
    end,
    case Node of
        undefined -> ok;
        _ ->
            ok = join_once(Scope, {fabric_peer_node, Node}),
            ok = join_once(Scope, {fabric_peer_up, Node}),
            put(?JOINED, Node),
            ok
    end.

join_once(Scope, G) ->
    case lists:member(self(), pg:get_local_members(Scope, G)) of
        true -> ok;
        false -> pg:join(Scope, G, self())
    end.

%% @doc The calling connection process lost its client (its session may be kept): no
%% longer connected in the directory.
-spec down(map(), binary() | undefined) -> ok.
down(#{cluster := false}, _) -> ok;
down(#{cluster := Scope}, _) ->
    case get(?JOINED) of
        undefined -> ok;
        N ->
            _ = pg:leave(Scope, {fabric_peer_up, N}, self()),
            ok
    end.

leave(Scope, N) ->
    _ = pg:leave(Scope, {fabric_peer_up, N}, self()),
    _ = pg:leave(Scope, {fabric_peer_node, N}, self()),
    erase(?JOINED),
    ok.

%% @doc `{Name, Node}' or `whereis_node' from connection `From' of this server, whose own
%% node table has no client `Node': the connection process of another server that holds
%% it (a connected one first), if the `routing' policy allows (`FromNode', `Node').
-spec target(map(), binary() | undefined, pid(), binary()) -> {ok, pid()} | not_allowed | none.
target(#{cluster := false}, _, _, _) -> none;
target(#{cluster := Scope} = O, FromNode, From, Node) ->
    Up = foreign(Scope, {fabric_peer_up, Node}, From),
    case Up ++ foreign(Scope, {fabric_peer_node, Node}, From) of
        [Conn | _] ->
            case fabric_peer_router:allowed(O, FromNode, Node) of
                true -> {ok, Conn};
                false -> not_allowed
            end;
        [] -> none
    end.

%% @doc The connected client nodes of the other servers that `FromNode' may see.
-spec visible(map(), binary() | undefined, [binary()]) -> [binary()].
visible(#{cluster := false}, _, Local) -> Local;
visible(#{cluster := Scope} = O, FromNode, Local) ->
    Remote = [N || {fabric_peer_up, N} <- pg:which_groups(Scope), N =/= FromNode,
                   foreign(Scope, {fabric_peer_up, N}, self()) =/= [],
                   fabric_peer_router:allowed(O, FromNode, N)],
    lists:usort(Local ++ Remote).

%% @doc The calling server connection process owns session `Sid' (it keeps it until it
%% ends: `pg' drops it then).
-spec session(map(), binary()) -> ok.
session(#{cluster := false}, _) -> ok;
session(#{cluster := Scope}, Sid) -> join_once(Scope, {fabric_peer_session, Sid});
session(_, _) -> ok.

%% @doc The owner of session `Sid' at another server of the cluster, or `undefined'.
-spec session_owner(map(), binary()) -> pid() | undefined.
session_owner(#{cluster := Scope}, Sid) when Scope =/= false ->
    case foreign(Scope, {fabric_peer_session, Sid}, self()) of
        [Owner | _] -> Owner;
        [] -> undefined
    end;
session_owner(_, _) -> undefined.

%% @doc A relay (`fabric_peer_cluster_relay', the calling process) of the server with
%% settings `O' starts: it is linked to the server's cluster process (it ends with the
%% server), closed by `drain/1', and counted with the server's connections (`info/1'
%% `relays', `max_connections': registered here, forgotten by the cluster process when it
%% ends). `ok', or `{error, no_cluster}'.
-spec relay(map()) -> ok | {error, no_cluster}.
relay(#{cluster := Scope, ref := Ref}) when Scope =/= false ->
    case pg:get_local_members(Scope, ?SERVERS) of
        [Cluster | _] ->
            true = link(Cluster),
            ok = fabric_peer_registry:add_relay(Ref, self()),
            gen_server:cast(Cluster, {relay, self()});
        [] -> {error, no_cluster}
    end;
relay(_) -> {error, no_cluster}.

%% @doc Close the relays of a server (its cluster process, `fabric_peer:drain_server/1').
-spec drain(pid()) -> ok.
drain(Cluster) -> gen_server:call(Cluster, drain, 10000).

%% @doc `route_grace' ended for a client of this server (docs/protocol.md 16.4): the other
%% servers end their exports of these proxies too.
-spec grace(map(), [pid()]) -> ok.
grace(#{cluster := false}, _) -> ok;
grace(#{cluster := Scope}, Proxies) ->
    _ = [S ! {fabric_cluster, {unexport, Proxies}}
         || S <- pg:get_members(Scope, ?SERVERS), node(S) =/= node()],
    ok.

%% @doc A name lookup of every connection (docs/cluster.md section 5): the local registry,
%% then `global'.
-spec whereis_name(atom()) -> pid() | port() | undefined.
whereis_name(Name) ->
    case erlang:whereis(Name) of
        undefined ->
            case global:whereis_name(Name) of
                Pid when is_pid(Pid) -> Pid;
                _ -> undefined
            end;
        Local -> Local
    end.

%% Members of a group that live on other nodes (a clustered server per scope per node:
%% the local members are this server's, which its own node table knows), `Self' excluded.
foreign(Scope, Group, Self) ->
    [P || P <- pg:get_members(Scope, Group), node(P) =/= node(), P =/= Self].

%%% the cluster process of a server

-record(st, {o :: map(), scope :: atom(), mon :: reference(),
             remote = #{} :: #{binary() => [pid()]},
             relays = #{} :: #{reference() => pid()},
             scope_pid :: pid() | undefined}).

%% @private
-spec init(map()) -> {ok, #st{}} | {stop, term()}.
init(#{cluster := Scope} = O) ->
    logger:update_process_metadata(?FABRIC_LOG),
    %% a relay ending is no reason to end (they are linked to us: they end with us)
    process_flag(trap_exit, true),
    ScopePid = case pg:start_link(Scope) of
                   {ok, P} -> P;
                   {error, {already_started, _}} -> undefined
               end,
    case pg:get_local_members(Scope, ?SERVERS) of
        [_ | _] -> {stop, {cluster_scope_in_use, Scope}};
        [] ->
            ok = pg:join(Scope, ?SERVERS, self()),
            {Mon, Groups} = pg:monitor_scope(Scope),
            Remote = maps:fold(fun({fabric_peer_up, N}, Pids, Acc) -> add(N, Pids, Acc);
                                  (_, _, Acc) -> Acc
                               end, #{}, Groups),
            ?LOG_INFO(#{what => cluster_joined, scope => Scope, servers =>
                            [node(P) || P <- pg:get_members(Scope, ?SERVERS)]}, ?FABRIC_LOG),
            {ok, #st{o = O, scope = Scope, mon = Mon, remote = Remote, scope_pid = ScopePid}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(drain, _, #st{relays = Rs} = St) ->
    _ = [fabric_peer_cluster_relay:close(R) || R <- maps:values(Rs)],
    {reply, ok, St};
handle_call(_, _, St) -> {reply, {error, badarg}, St}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({relay, Pid}, #st{relays = Rs} = St) ->
    {noreply, St#st{relays = Rs#{erlang:monitor(process, Pid) => Pid}}};
handle_cast(_, St) -> {noreply, St}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({Mon, join, {fabric_peer_up, N}, Pids}, #st{mon = Mon, remote = R} = St) ->
    R1 = add(N, Pids, R),
    _ = [notify(St, {nodeup, N}) || not is_map_key(N, R), is_map_key(N, R1)],
    {noreply, St#st{remote = R1}};
handle_info({Mon, leave, {fabric_peer_up, N}, Pids}, #st{mon = Mon, remote = R} = St) ->
    R1 = case maps:get(N, R, []) -- Pids of
             [] -> maps:remove(N, R);
             Left -> R#{N => Left}
         end,
    _ = [notify(St, {nodedown, N}) || is_map_key(N, R), not is_map_key(N, R1)],
    {noreply, St#st{remote = R1}};
handle_info({Mon, _, _, _}, #st{mon = Mon} = St) -> {noreply, St};
handle_info({fabric_cluster, {unexport, Proxies}}, #st{o = #{ref := Ref}} = St) ->
    _ = [C ! {fabric_route, {unexport, Proxies}} || C <- fabric_peer_router:conns(Ref)],
    {noreply, St};
handle_info({'DOWN', M, process, Pid, _}, #st{relays = Rs, o = #{ref := Ref}} = St) ->
    ok = fabric_peer_registry:remove_relay(Ref, Pid),
    {noreply, St#st{relays = maps:remove(M, Rs)}};
handle_info({'EXIT', Pid, Why}, #st{scope_pid = Pid} = St) ->
    %% the pg scope we started ended: so do we (and the server's connections after us,
    %% rest_for_one)
    {stop, Why, St};
handle_info({'EXIT', _, _}, St) -> {noreply, St};   % a relay
handle_info(_, St) -> {noreply, St}.

add(N, Pids, R) ->
    case [P || P <- Pids, node(P) =/= node()] of
        [] -> R;
        New -> R#{N => New ++ maps:get(N, R, [])}
    end.

notify(#st{o = #{ref := Ref} = O}, Notice) -> fabric_peer_router:notify(Ref, O, none, Notice).
