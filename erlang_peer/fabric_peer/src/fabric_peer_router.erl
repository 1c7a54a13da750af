%% @doc The node table of routing servers (docs/protocol.md 16): which server-side
%% connection holds which client node name, the `routing' policy, and the fan-out of
%% `nodeup' / `nodedown'. The one module that reads and writes the `fabric_peer_router' ETS
%% table (created with the registry's tables by `fabric_peer_sup', public like them so that
%% connections claim and look up names without a round trip).
%%
%% Rows, per server handle `Ref':
%% <ul>
%% <li>`{{Ref, node, NodeBin}, Pid, claimed | up | down}': the connection process that holds
%%   the name (the session's owner), and whether its client is connected (`claimed': frame 4
%%   written, not established yet: refused to others, not listed);</li>
%% <li>`{{Ref, conn, Pid}, NodeBin | undefined}': every connection of a routing server
%%   (named or not), for the grace period's notices and a sender's own name;</li>
%% <li>`{{Ref, warned, From, To}}': a predicate that crashed for this pair was logged.</li>
%% </ul>
%% Connections are told with messages `{fabric_route, Event}' (`fabric_peer_route_conn').
-module(fabric_peer_router).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([create_table/0, forget/1, settings/2, enabled/1,
         claim/4, move/4, up/3, down/3, release/3,
         target/4, visible/3, allowed/3, conns/1, own_node/2, notify/4]).

-define(T, fabric_peer_router).

%% @doc Create the table, owned by the calling process (`fabric_peer_sup').
-spec create_table() -> ok.
create_table() ->
    _ = ets:new(?T, [named_table, public, set, {read_concurrency, true}]),
    ok.

%% @doc Forget every row of a handle (its server stopped).
-spec forget(reference()) -> ok.
forget(Ref) ->
    case ets:whereis(?T) of
        undefined -> ok;
        _ ->
            true = ets:match_delete(?T, {{Ref, '_', '_'}, '_', '_'}),
            true = ets:match_delete(?T, {{Ref, '_', '_'}, '_'}),
            true = ets:match_delete(?T, {{Ref, warned, '_', '_'}}),
            ok
    end.

%% @doc Complete normalized settings (`fabric_peer_opts'): a server offers `route' only with
%% `routing' not false and `heartbeat' offered (16.1); its connections' proxies are bounded
%% by `route_max_proxies' too (16.7). A client accepts `route' only with a `node' of its
%% own (`DefaultNode' false): the default, `node()', is the same for every client of one
%% VM (and `nonode@nohost' without distribution), and a second one would be refused.
-spec settings(boolean(), map()) -> map().
settings(true, #{role := client, features := F} = M) ->
    M#{features => F -- [<<"route">>]};
settings(_, #{role := server, routing := false, features := F} = M) ->
    M#{features => F -- [<<"route">>]};
settings(_, #{role := server, features := F, max_proxies := MP, route_max_proxies := RMP} = M) ->
    lists:member(<<"heartbeat">>, F)
        orelse throw({bad_option, {routing, {needs_feature, <<"heartbeat">>}}}),
    M#{max_proxies => min(MP, RMP)};
settings(_, M) -> M.

%% @doc True when these server settings route between clients.
-spec enabled(map()) -> boolean().
enabled(#{role := server, features := F}) -> lists:member(<<"route">>, F);
enabled(_) -> false.

%%% names (16.1)

%% @doc Frame 4 of a client that agreed `route' and announced `Node': may `Claimant' (the
%% process that will own the session: the resumed session's owner, or the new connection)
%% hold it? `ok' (held by `Claimant' from now on), or `node_in_use'. A name held by a kept
%% session without a connection is taken over: that session ends now.
-spec claim(reference(), binary(), pid(), map()) -> ok | node_in_use.
claim(_, Node, _, #{node := Node}) -> node_in_use;
claim(Ref, Node, Claimant, O) ->
    Key = {Ref, node, Node},
    case ets:lookup(?T, Key) of
        [] ->
            case ets:insert_new(?T, {Key, Claimant, claimed}) of
                true -> took(Ref, Node, Claimant);
                false -> claim(Ref, Node, Claimant, O)
            end;
        [{_, Claimant, _}] -> took(Ref, Node, Claimant);
        [{_, _, up}] -> node_in_use;
        [{_, _, claimed}] -> node_in_use;
        [{_, Old, down}] ->
            Ms = [{{Key, Old, down}, [], [{{{const, Key}, {const, Claimant}, claimed}}]}],
            case ets:select_replace(?T, Ms) of
                1 ->
                    ?LOG_INFO(#{what => node_taken_over, node => Node,
                                text => "reconnected as a new client: its kept session ends"},
                              ?FABRIC_LOG),
                    gen_statem:cast(Old, expire_session),
                    took(Ref, Node, Claimant);
                0 -> claim(Ref, Node, Claimant, O)
            end
    end.

%% @doc The session a name was claimed for could not be resumed: the new connection `To'
%% holds the name `From' claimed for it (its own session is new).
-spec move(reference(), binary(), pid(), pid()) -> ok.
move(Ref, Node, From, To) ->
    Key = {Ref, node, Node},
    Ms = [{{Key, From, '_'}, [], [{{{const, Key}, {const, To}, claimed}}]}],
    _ = ets:select_replace(?T, Ms),
    took(Ref, Node, To).

%% A resumed session renamed by its client gives up its old name (its nodedown was sent
%% when its connection was lost).
took(Ref, Node, Pid) ->
    case ets:lookup(?T, {Ref, conn, Pid}) of
        [{_, Old}] when is_binary(Old), Old =/= Node ->
            true = ets:match_delete(?T, {{Ref, node, Old}, Pid, '_'});
        _ -> true
    end,
    true = ets:insert(?T, {{Ref, conn, Pid}, Node}),
    ok.

%% @doc Connection `Pid' of a routing server is established: listed, and its name (if any)
%% is up, told to the clients that may see it (`nodeup').
-spec up(reference(), pid(), map()) -> ok.
up(Ref, Pid, O) ->
    _ = ets:insert_new(?T, {{Ref, conn, Pid}, undefined}),
    case own_node(Ref, Pid) of
        undefined -> ok;
        Node ->
            case set_state(Ref, Node, Pid, up) of
                true -> notify(Ref, O, Pid, {nodeup, Node});
                false -> ok
            end
    end.

%% @doc Connection `Pid' lost its client (its session may be kept): `nodedown' once.
-spec down(reference(), pid(), map()) -> ok.
down(Ref, Pid, O) ->
    case own_node(Ref, Pid) of
        undefined -> ok;
        Node ->
            case ets:lookup(?T, {Ref, node, Node}) of
                [{_, Pid, up}] ->
                    _ = set_state(Ref, Node, Pid, down),
                    notify(Ref, O, Pid, {nodedown, Node});
                [{_, Pid, claimed}] -> _ = set_state(Ref, Node, Pid, down), ok;
                _ -> ok
            end
    end.

%% @doc Connection `Pid' ends: its name is free, its rows go.
-spec release(reference(), pid(), map()) -> ok.
release(Ref, Pid, O) ->
    ok = down(Ref, Pid, O),
    case own_node(Ref, Pid) of
        undefined -> ok;
        Node -> true = ets:match_delete(?T, {{Ref, node, Node}, Pid, '_'})
    end,
    true = ets:delete(?T, {Ref, conn, Pid}),
    ok.

set_state(Ref, Node, Pid, State) ->
    Key = {Ref, node, Node},
    Ms = [{{Key, Pid, Old}, [], [{{{const, Key}, {const, Pid}, State}}]}
          || Old <- [claimed, up, down], Old =/= State],
    ets:select_replace(?T, Ms) > 0.

%%% lookups

%% @doc Where a `{Name, Node}' from connection `From' goes (16.3): `{ok, Conn}' (the
%% connection process of the client `Node', connected or with its session kept),
%% `not_allowed' (the policy refuses), or `none' (no client by that name).
-spec target(reference(), map(), pid(), binary()) -> {ok, pid()} | not_allowed | none.
target(Ref, O, From, Node) ->
    case ets:lookup(?T, {Ref, node, Node}) of
        [{_, Conn, State}] when State =/= claimed, Conn =/= From ->
            case allowed(O, own_node(Ref, From), Node) of
                true -> {ok, Conn};
                false -> not_allowed
            end;
        %% a client of another server of the cluster (docs/cluster.md section 3)
        _ -> fabric_peer_cluster:target(O, own_node(Ref, From), From, Node)
    end.

%% @doc The client nodes connection `From' may see: connected, not itself (16.6).
-spec visible(reference(), map(), pid()) -> [binary()].
visible(Ref, O, From) ->
    Mine = own_node(Ref, From),
    fabric_peer_cluster:visible(O, Mine, [N || [N, Pid] <- ets:match(?T, {{Ref, node, '$1'}, '$2', up}),
                                               Pid =/= From, allowed(O, Mine, N)]).

%% @doc The `routing' policy for `(From, To)' (16.2): a predicate that crashes or answers
%% anything but `true' refuses; a crash is logged once per pair of nodes.
-spec allowed(map(), binary() | undefined, binary()) -> boolean().
allowed(#{routing := true}, _, _) -> true;
allowed(#{routing := F, ref := Ref}, From, To) when is_function(F, 2) ->
    try F(From, To) =:= true
    catch C:E ->
            case ets:insert_new(?T, {{Ref, warned, From, To}}) of
                true ->
                    ?LOG_WARNING(#{what => routing_predicate_failed, from => From, to => To,
                                   class => C, reason => E, then => refuse}, ?FABRIC_LOG);
                false -> ok
            end,
            false
    end;
allowed(_, _, _) -> false.

%% @doc Every connection process of a routing server.
-spec conns(reference()) -> [pid()].
conns(Ref) -> [P || [P] <- ets:match(?T, {{Ref, conn, '$1'}, '_'})].

%% @doc The client node name held by connection `Pid', or `undefined'.
-spec own_node(reference(), pid()) -> binary() | undefined.
own_node(Ref, Pid) ->
    case ets:lookup(?T, {Ref, conn, Pid}) of
        [{_, Node}] -> Node;
        [] -> undefined
    end.

%% @doc `nodeup' / `nodedown' to the connected named clients that may see `Node' (but
%% `Source'; `fabric_peer_cluster' tells them about the clients of other servers).
-spec notify(reference(), map(), pid() | none, {nodeup | nodedown, binary()}) -> ok.
notify(Ref, O, Source, {_, Node} = Notice) ->
    _ = [Pid ! {fabric_route, {notice, Notice}}
         || [N, Pid] <- ets:match(?T, {{Ref, node, '$1'}, '$2', up}),
            Pid =/= Source, allowed(O, N, Node)],
    ok.
