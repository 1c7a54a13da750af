%% @doc The registry: the one module that reads and writes the application's two shared ETS
%% tables. No other module names them.
%%
%% `fabric_peer_registry' holds, per server or client handle (`Ref'):
%% <ul>
%% <li>`{Ref, policy}': the name policy every connection of the handle checks;</li>
%% <li>`{Ref, allowed}': a server's allowed names and forced system names (for `allow/2');</li>
%% <li>`{Ref, port}': a server's real listening port;</li>
%% <li>`{Ref, conn_sup}': a server's connection supervisor;</li>
%% <li>`{Ref, {session, Sid}}': the server-side connection that owns session `Sid';</li>
%% <li>`{Ref, {detached, Pid}}': a detached server session, with the time it detached;</li>
%% <li>`{Ref, {relay, Pid}}': a relay a clustered server carries for a session of another
%%   server (`fabric_peer_cluster_relay'), counted with its connections, and `{Ref, relays}':
%%   how many.</li>
%% </ul>
%% `fabric_peer_proxies' maps each proxy pid to its connection pid, so that
%% `fabric_peer:send/2' can report errors synchronously and `is_proxy/1' answers at once;
%% `{shared, Conn}' there holds what connection `Conn' shares with its proxies.
%%
%% Both tables are created by `fabric_peer_sup' (a long-lived process, so they survive any
%% worker crash) and are public, because connections register their proxies and sessions
%% on their hot path without a round trip to an owner process; they are written only
%% through the functions below.
-module(fabric_peer_registry).

-export([create_tables/0,
         init_handle/2, forget/1,
         policy/1, set_policy/2, allowed/1, set_allowed/3,
         port/1, set_port/2,
         conn_sup/1, set_conn_sup/2,
         session_owner/2, register_session/3, unregister_session/3,
         keep_detached/3, unkeep_detached/2,
         add_relay/2, remove_relay/2, relays/1,
         add_shared/2, remove_shared/1, add_proxy/2, remove_proxy/1, proxy_conn/1, proxy_entry/1, is_proxy/1]).

-define(REG, fabric_peer_registry).
-define(PROXIES, fabric_peer_proxies).

%% @doc Create both tables, owned by the calling process (`fabric_peer_sup').
-spec create_tables() -> ok.
create_tables() ->
    _ = ets:new(?REG, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(?PROXIES, [named_table, public, set, {read_concurrency, true}]),
    fabric_peer_router:create_table().

%%% handles

%% @doc Record a new handle's policy (and, for a server, its allowed names).
-spec init_handle(reference(), #{policy := term(), allowed => {[atom()], [atom()]}}) -> ok.
init_handle(Ref, #{policy := Policy} = Init) ->
    Rows = [{{Ref, policy}, Policy} | [{{Ref, allowed}, A} || #{allowed := A} <- [Init]]],
    true = ets:insert(?REG, Rows),
    ok.

%% @doc Forget everything recorded for a handle.
-spec forget(reference()) -> ok.
forget(Ref) ->
    true = ets:match_delete(?REG, {{Ref, '_'}, '_'}),
    fabric_peer_router:forget(Ref).

%% @doc The handle's current name policy, or `undefined'.
-spec policy(reference()) -> term() | undefined.
policy(Ref) -> lookup({Ref, policy}).

%% @doc Replace the handle's name policy.
-spec set_policy(reference(), term()) -> ok.
set_policy(Ref, Policy) -> insert({Ref, policy}, Policy).

%% @doc A server's `{Allowed, ForcedSystemNames}'.
-spec allowed(reference()) -> {[atom()], [atom()]}.
allowed(Ref) ->
    [{_, A}] = ets:lookup(?REG, {Ref, allowed}),
    A.

%% @doc Replace a server's allowed names and its policy in one write.
-spec set_allowed(reference(), {[atom()], [atom()]}, term()) -> ok.
set_allowed(Ref, Allowed, Policy) ->
    true = ets:insert(?REG, [{{Ref, allowed}, Allowed}, {{Ref, policy}, Policy}]),
    ok.

%%% servers

%% @doc A server's listening port, or `undefined' before it listens.
-spec port(reference()) -> inet:port_number() | undefined.
port(Ref) -> lookup({Ref, port}).

%% @doc Record a server's real listening port.
-spec set_port(reference(), inet:port_number()) -> ok.
set_port(Ref, Port) -> insert({Ref, port}, Port).

%% @doc A server's connection supervisor, or `undefined'.
-spec conn_sup(reference()) -> pid() | undefined.
conn_sup(Ref) -> lookup({Ref, conn_sup}).

%% @doc Record a server's connection supervisor.
-spec set_conn_sup(reference(), pid()) -> ok.
set_conn_sup(Ref, Pid) -> insert({Ref, conn_sup}, Pid).

%%% sessions (server side)

%% @doc The connection process owning session `Sid', or `undefined'.
-spec session_owner(reference(), binary()) -> pid() | undefined.
session_owner(Ref, Sid) -> lookup({Ref, {session, Sid}}).

%% @doc Record `Pid' as the owner of session `Sid'.
-spec register_session(reference(), binary(), pid()) -> ok.
register_session(Ref, Sid, Pid) -> insert({Ref, {session, Sid}}, Pid).

%% @doc Forget session `Sid' if `Pid' still owns it.
-spec unregister_session(reference(), binary(), pid()) -> ok.
unregister_session(Ref, Sid, Pid) ->
    true = ets:delete_object(?REG, {{Ref, {session, Sid}}, Pid}),
    ok.

%% @doc Record `Pid' as a detached session and return the detached sessions beyond `Max'
%% (oldest first), which are forgotten here; the caller expires them.
-spec keep_detached(reference(), pid(), non_neg_integer()) -> [pid()].
keep_detached(Ref, Pid, Max) ->
    true = ets:insert(?REG, {{Ref, {detached, Pid}}, erlang:unique_integer([monotonic])}),
    Kept = lists:sort([{T, P} || [P, T] <- ets:match(?REG, {{Ref, {detached, '$1'}}, '$2'})]),
    Excess = [P || {_, P} <- lists:sublist(Kept, max(0, length(Kept) - Max))],
    [true = ets:delete(?REG, {Ref, {detached, P}}) || P <- Excess],
    Excess.

%% @doc `Pid' is no longer a detached session.
-spec unkeep_detached(reference(), pid()) -> ok.
unkeep_detached(Ref, Pid) ->
    true = ets:delete(?REG, {Ref, {detached, Pid}}),
    ok.

%%% relays

%% @doc Record relay `Pid' of a server (counted in `{Ref, relays}', read at every accept).
-spec add_relay(reference(), pid()) -> ok.
add_relay(Ref, Pid) ->
    _ = ets:insert_new(?REG, {{Ref, {relay, Pid}}, true}) andalso
        ets:update_counter(?REG, {Ref, relays}, 1, {{Ref, relays}, 0}),
    ok.

%% @doc Forget relay `Pid' of a server (it ended).
-spec remove_relay(reference(), pid()) -> ok.
remove_relay(Ref, Pid) ->
    _ = ets:take(?REG, {Ref, {relay, Pid}}) =/= [] andalso
        ets:update_counter(?REG, {Ref, relays}, -1, {{Ref, relays}, 1}),
    ok.

%% @doc How many relays a server carries.
-spec relays(reference()) -> non_neg_integer().
relays(Ref) ->
    case lookup({Ref, relays}) of
        undefined -> 0;
        N -> N
    end.

%%% proxies

%% @doc Record what connection `Conn' shares with its proxies (`token', `counters',
%% `send_timeout', `max_pending'): once per connection, not in every proxy's entry (issue
%% 15: 248 bytes per proxy). Keyed `{shared, Conn}', which no proxy pid is.
-spec add_shared(pid(), map()) -> ok.
add_shared(Conn, Shared) ->
    true = ets:insert(?PROXIES, {{shared, Conn}, Shared}),
    ok.

%% @doc Forget what `Conn' shared (it ends).
-spec remove_shared(pid()) -> ok.
remove_shared(Conn) ->
    true = ets:delete(?PROXIES, {shared, Conn}),
    ok.

%% @doc Record proxy `Proxy' of connection `Conn'.
-spec add_proxy(pid(), pid()) -> ok.
add_proxy(Proxy, Conn) ->
    true = ets:insert(?PROXIES, {Proxy, Conn}),
    ok.

-spec remove_proxy(pid()) -> ok.
remove_proxy(Proxy) ->
    true = ets:delete(?PROXIES, Proxy),
    ok.

%% @doc The connection of proxy `Pid', or `undefined' when `Pid' is not a proxy.
-spec proxy_conn(pid()) -> pid() | undefined.
proxy_conn(Pid) ->
    case ets:lookup(?PROXIES, Pid) of
        [{_, Conn}] -> Conn;
        [] -> undefined
    end.

%% @doc A proxy's connection and what it shares with its proxies (`add_shared/2').
-spec proxy_entry(pid()) -> {pid(), map()} | undefined.
proxy_entry(Pid) ->
    case ets:lookup(?PROXIES, Pid) of
        [{_, Conn}] ->
            case ets:lookup(?PROXIES, {shared, Conn}) of
                [{_, Shared}] -> {Conn, Shared};
                [] -> undefined
            end;
        [] -> undefined
    end.

%% @doc True when `Pid' is a live proxy (false, not an error, before the application runs).
-spec is_proxy(pid()) -> boolean().
is_proxy(Pid) ->
    ets:whereis(?PROXIES) =/= undefined andalso ets:member(?PROXIES, Pid).

%%% internals

lookup(Key) ->
    case ets:lookup(?REG, Key) of
        [{_, V}] -> V;
        [] -> undefined
    end.

insert(Key, V) ->
    true = ets:insert(?REG, {Key, V}),
    ok.
