%% @doc The `route' feature on one connection (docs/protocol.md 16), without I/O: the
%% frames `whereis_node', `nodes', `nodes_reply', `nodeup', `nodedown' (their shapes and
%% directions), a routing server's resolution of `{Name, Node}', and a client's set of the
%% nodes it believes up with its `monitor_node' monitors. Works on the protocol state of
%% `fabric_peer_protocol' (its `route' field) and returns actions like it; what needs the
%% node table or another connection is a `{route, Cmd}' action that
%% `fabric_peer_route_conn' carries out.
%%
%% The `route' field: a server's `asks' (`whereis_node' requests waiting for the other
%% client, `ReqId => Tag'); a client's `reqs' (its `nodes' requests: `ReqId => {call, From}
%% | {monitor, Pid, NodeBin} | refresh'), `up' (the node set) and `mons' (`NodeBin =>
%% [Pid]').
-module(fabric_peer_route).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_protocol.hrl").

-export([classify/1, node_name/1, dispatch/2, resolve/2, finish/1,
         established/1, lost/1, session_end/1,
         nodes/2, monitor_node/4, whereis_node/4,
         nodes_reply/3, whereis_answer/3, notice/2, unexport/2, proxies/1]).

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [act/2]).

-type proto() :: fabric_peer_protocol:proto().

%%% frames

%% @doc The shape of a `route' frame (section 16.10): the frame, or `unknown_frame'.
-spec classify(term()) -> tuple() | {error, unknown_frame}.
classify({whereis_node, Req, Name, Node} = F)
  when is_integer(Req), Req > 0, is_binary(Name), is_binary(Node) -> F;
classify({nodes, Req} = F) when is_integer(Req), Req > 0 -> F;
classify({nodes_reply, Req, Nodes} = F) when is_integer(Req), is_list(Nodes) ->
    case lists:all(fun node_name/1, Nodes) of
        true -> F;
        false -> {error, unknown_frame}
    end;
classify({Notice, Node} = F) when Notice =:= nodeup; Notice =:= nodedown ->
    case node_name(Node) of
        true -> F;
        false -> {error, unknown_frame}
    end;
classify(_) -> {error, unknown_frame}.

%% @doc A node name as the protocol carries it (16.1): `name@host' (both parts non-empty),
%% UTF-8, at most 255 bytes.
-spec node_name(term()) -> boolean().
node_name(N) when is_binary(N), byte_size(N) > 0, byte_size(N) =< 255 ->
    is_binary(unicode:characters_to_binary(N)) andalso
        case binary:split(N, <<"@">>) of
            [Name, Host] -> Name =/= <<>> andalso Host =/= <<>>;
            _ -> false
        end;
node_name(_) -> false.

%% True when `route' was agreed on this connection.
-spec on(proto()) -> boolean().
on(#p{mode = extended, feats = #{<<"route">> := true}}) -> true;
on(_) -> false.

%% @doc A `route' frame received (`classify/1' accepted it). A frame of the other
%% direction is `unknown_frame' (16.6).
-spec dispatch(tuple(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
dispatch({whereis_node, Req, NameBin, Node}, #p{o = #{node := Node}} = P) ->
    %% our own node: a plain whereis (16.5)
    {ok, fabric_peer_names:whereis_in(Req, NameBin, P)};
dispatch({whereis_node, Req, Name, Node}, #p{o = #{role := server}} = P) ->
    #{asks := Asks} = R = state(P),
    case is_map_key(Req, Asks) of
        true -> {error, unknown_frame, {whereis_node_pending, Req}, P};
        false ->
            Tag = make_ref(),
            P1 = P#p{route = R#{asks := Asks#{Req => Tag}}},
            {ok, act({route, {whereis_node, Tag, Name, Node}}, P1)}
    end;
dispatch({nodes, Req}, #p{o = #{role := server}} = P) ->
    #{asks := Asks} = R = state(P),
    case is_map_key({nodes, Req}, Asks) of
        true -> {error, unknown_frame, {nodes_pending, Req}, P};
        false ->
            P1 = P#p{route = R#{asks := Asks#{{nodes, Req} => true}}},
            {ok, act({route, {nodes, Req}}, P1)}
    end;
dispatch({nodes_reply, Req, Nodes}, #p{o = #{role := client}} = P) ->
    #{reqs := Reqs} = R = state(P),
    case maps:take(Req, Reqs) of
        {What, Reqs1} -> {ok, answered(What, Nodes, P#p{route = R#{reqs := Reqs1}})};
        error -> {error, unknown_frame, {unknown_nodes_reply, Req}, P}
    end;
dispatch({nodeup, Node}, #p{o = #{role := client}} = P) ->
    #{up := Up} = R = state(P),
    {ok, P#p{route = R#{up := Up#{Node => true}}}};
dispatch({nodedown, Node}, #p{o = #{role := client}} = P) ->
    #{up := Up} = R = state(P),
    {ok, fire([Node], P#p{route = R#{up := maps:remove(Node, Up)}})};
dispatch(F, P) -> {error, unknown_frame, {wrong_direction, element(1, F)}, P}.

%% The answer to one of our `nodes' requests: the node set is the list; every monitored
%% node it does not list is down.
answered(What, Nodes, P0) ->
    R = state(P0),
    Up = maps:from_list([{N, true} || N <- Nodes]),
    P = P0#p{route = R#{up := Up}},
    P1 = case What of
             {call, From} ->
                 {Atoms, Pa} = atoms(Nodes, P, []),
                 act({reply, From, Atoms}, Pa);
             {monitor, Pid, Node} -> add_monitor(Pid, Node, P);
             refresh -> P
         end,
    #{mons := Mons} = state(P1),
    fire([N || N <- maps:keys(Mons), not is_map_key(N, Up)], P1).

add_monitor(Pid, Node, P) ->
    #{mons := Mons} = R = state(P),
    P1 = P#p{route = R#{mons := Mons#{Node => [Pid | maps:get(Node, Mons, [])]}}},
    case is_map_key(Node, maps:get(up, R)) of
        true -> P1;
        false -> fire([Node], P1)
    end.

%% `{nodedown, Node}' to every monitor of these nodes, which are gone.
fire(Nodes, P) ->
    #{mons := Mons} = R = state(P),
    {Fired, Mons1} = lists:foldl(fun(N, {Acc, M}) ->
                                         case maps:take(N, M) of
                                             {Pids, M1} -> {[{N, Pid} || Pid <- Pids] ++ Acc, M1};
                                             error -> {Acc, M}
                                         end
                                 end, {[], Mons}, Nodes),
    lists:foldl(fun({N, Pid}, Acc) -> act({deliver, Pid, {nodedown, to_atom(N)}}, Acc) end,
                P#p{route = R#{mons := Mons1}}, lists:reverse(Fired)).

%% Node names are what `nodes()' and `{nodedown, Node}' give in Erlang: atoms. A name new
%% to this VM costs one atom of the connection's budget (`max_new_atoms'); beyond it, the
%% name is left out (logged).
atoms([N | Ns], P, Acc) ->
    try binary_to_existing_atom(N, utf8) of
        A -> atoms(Ns, P, [A | Acc])
    catch error:badarg when P#p.atoms_left > 0 ->
            atoms(Ns, fabric_peer_payload:spend_atoms(1, P), [binary_to_atom(N, utf8) | Acc]);
          error:badarg ->
            ?LOG_WARNING(#{what => node_left_out, peer => P#p.peer, node => N,
                           reason => max_new_atoms}, ?FABRIC_LOG),
            atoms(Ns, P, Acc)
    end;
atoms([], P, Acc) -> {lists:reverse(Acc), P}.

%% Monitored nodes were given as atoms: they exist.
to_atom(N) -> binary_to_existing_atom(N, utf8).

%%% a routing server: `{Name, Node}' (16.3)

%% @doc Where a `{Name, Node}' goes at a routing server: `pass' (not routing, the node
%% is ours or in `routable_nodes': section 4.1 applies), `{ok, {route, Conn, Name}}'
%% (another client), `drop' (no such node), or refused by the policy.
-spec resolve({atom(), atom() | binary()}, proto()) ->
          pass | drop | {ok, {route, pid(), atom()}} | {error, not_allowed, term()}.
resolve({Name, Node}, #p{env = #{route := Target}, o = O} = P) ->
    %% a `Node' that is no atom here came as its name (fabric_peer_etf, `dest_node')
    NodeBin = case is_atom(Node) of
                  true -> atom_to_binary(Node, utf8);
                  false -> Node
              end,
    case Node =:= node() orelse NodeBin =:= maps:get(node, O)
        orelse lists:member(Node, maps:get(routable_nodes, O)) of
        true -> pass;
        false ->
            case Target(NodeBin) of
                {ok, Conn} -> {ok, {route, Conn, Name}};
                %% logged once, as the dropped frame (code not_allowed)
                not_allowed -> {error, not_allowed, {Name, Node}};
                none ->
                    ?LOG_DEBUG(#{what => unknown_node, peer => P#p.peer, name => Name, node => Node,
                                 then => drop}, ?FABRIC_LOG),
                    drop
            end
    end;
resolve(_, _) -> pass.

%% @doc A routing server's answer to `{nodes, Req}'.
-spec nodes_reply(pos_integer(), [binary()], proto()) -> proto().
nodes_reply(Req, Nodes, P) ->
    #{asks := Asks} = R = state(P),
    case is_map_key({nodes, Req}, Asks) of
        true ->
            emit(ctrl, {nodes_reply, Req, Nodes},
                 P#p{route = R#{asks := maps:remove({nodes, Req}, Asks)}});
        false -> P   % asked on a connection that is gone
    end.

%% @doc The other client's answer to a `whereis_node' (`Result': S's proxy for its
%% process, `undefined', or an error), or its timeout: the first one answers the request.
-spec whereis_answer(reference(), term(), proto()) -> proto().
whereis_answer(Tag, Result, P) ->
    #{asks := Asks} = R = state(P),
    case [Req || {Req, T} <- maps:to_list(Asks), T =:= Tag] of
        [Req] ->
            P1 = P#p{route = R#{asks := maps:remove(Req, Asks)}},
            {Reply, P2} = export_result(Result, P1),
            emit(ctrl, {whereis_reply, Req, Reply}, P2);
        [] -> P
    end.

export_result(Pid, #p{s = S, o = O} = P) when is_pid(Pid) ->
    case fabric_peer_session:export_of(Pid, S) of
        {ok, Id} -> {{pr, Id}, P};
        error ->
            case fabric_peer_session:export_count(S) < maps:get(max_exports, O) of
                true ->
                    {Id, P1} = fabric_peer_payload:export(Pid, P),
                    {{pr, Id}, P1};
                false -> {undefined, P}
            end
    end;
export_result(_, P) -> {undefined, P}.

%% @doc `nodeup' / `nodedown' from the node table, for a connected client of ours that
%% agreed `route' (connection-scoped: never queued).
-spec notice({nodeup | nodedown, binary()}, proto()) -> proto().
notice(Notice, #p{connected = true} = P) ->
    case on(P) of
        true -> emit(ctrl, Notice, P);
        false -> P
    end;
notice(_, P) -> P.

%% @doc The grace period of another client ended (16.4): our exports of these processes
%% (the server's proxies for that client's processes) end with `noconnection' and their ids
%% are forgotten.
-spec unexport([pid()], proto()) -> proto().
unexport(Pids, P) ->
    lists:foldl(fun(Pid, #p{s = S} = Acc) ->
                        case fabric_peer_session:forget_export(Pid, S) of
                            {ok, Id, Mon, S1} ->
                                emit(ctrl, {'DEAD', {pr, Id}, noconnection},
                                     act({demonitor, Mon}, Acc#p{s = S1}));
                            error -> Acc
                        end
                end, P, Pids).

%% @doc Our proxies for the peer's processes.
-spec proxies(proto()) -> [pid()].
proxies(#p{s = S}) -> fabric_peer_session:proxies(S).

%%% a client

%% @doc `fabric_peer:nodes/1': the client nodes the server lets us see, asked now.
-spec nodes(gen_statem:from(), proto()) -> proto().
nodes(From, P) ->
    case check(P) of
        ok -> ask({call, From}, P);
        E -> act({reply, From, E}, P)
    end.

%% @doc `fabric_peer:monitor_node/3' for `Pid': `{nodedown, Node}' once when `Node' goes
%% down (at once if it is not up: the server is asked first); `false' removes them.
-spec monitor_node(pid(), binary(), boolean(), proto()) -> {ok | {error, term()}, proto()}.
monitor_node(Pid, Node, false, P) ->
    #{mons := Mons, reqs := Reqs0} = R0 = state(P),
    %% a monitor still waiting for the server's answer goes too
    Reqs = maps:map(fun(_, {monitor, X, N}) when X =:= Pid, N =:= Node -> refresh;
                       (_, W) -> W
                    end, Reqs0),
    R = R0#{reqs := Reqs},
    Left = [X || X <- maps:get(Node, Mons, []), X =/= Pid],
    Mons1 = case Left of
                [] -> maps:remove(Node, Mons);
                _ -> Mons#{Node => Left}
            end,
    {ok, P#p{route = R#{mons := Mons1}}};
monitor_node(Pid, Node, true, P) ->
    case check(P) of
        ok -> {ok, ask({monitor, Pid, Node}, P)};
        {error, not_connected} -> {ok, fire([Node], add_monitor(Pid, Node, P))};
        E -> {E, P}
    end.

%% @doc `fabric_peer:whereis(Conn, {Name, Node})' for a node other than the server's.
-spec whereis_node(binary(), binary(), gen_statem:from(), proto()) -> proto().
whereis_node(Name, Node, From, P) ->
    case check(P) of
        ok ->
            Req = P#p.next_req,
            P1 = emit(ctrl, {whereis_node, Req, Name, Node}, P#p{next_req = Req + 1}),
            P1#p{whereis_waiting = (P1#p.whereis_waiting)#{Req => From}};
        E -> act({reply, From, E}, P)
    end.

check(#p{connected = C} = P) ->
    case {on(P), C} of
        {false, _} -> {error, not_supported};
        {true, false} -> {error, not_connected};
        {true, true} -> ok
    end.

ask(What, P) ->
    Req = P#p.next_req,
    P1 = emit(ctrl, {nodes, Req}, P#p{next_req = Req + 1}),
    #{reqs := Reqs} = R = state(P1),
    P1#p{route = R#{reqs := Reqs#{Req => What}}}.

%%% lifecycle

%% @doc The connection is established: a client that agreed `route' learns the node set
%% (called by the connection process, `fabric_peer_route_conn:established/1').
-spec established(proto()) -> proto().
established(#p{o = #{role := client}} = P) ->
    case on(P) of
        true -> ask(refresh, P);
        false -> P
    end;
established(P) -> P.

%% @doc The socket is gone: requests in flight are void (unsequenced); `nodes' callers
%% get `{error, not_connected}'; monitors asked meanwhile stay, checked after the resume.
-spec lost(proto()) -> proto().
lost(P) ->
    #{reqs := Reqs} = R = state(P),
    P1 = P#p{route = R#{reqs := #{}, asks := #{}}},
    lists:foldl(fun({call, From}, Acc) -> act({reply, From, {error, not_connected}}, Acc);
                   ({monitor, Pid, Node}, Acc) -> add_monitor(Pid, Node, Acc);
                   (refresh, Acc) -> Acc
                end, P1, maps:values(Reqs)).

%% @doc The session ends (or the connection closes): every node is down to us.
-spec session_end(proto()) -> proto().
session_end(P) ->
    #{mons := Mons, reqs := Reqs} = R = state(P),
    P1 = lists:foldl(fun({call, From}, Acc) -> act({reply, From, {error, closed}}, Acc);
                        ({monitor, Pid, Node}, Acc) -> add_monitor(Pid, Node, Acc);
                        (refresh, Acc) -> Acc
                     end, P#p{route = R#{up := #{}, reqs := #{}}}, maps:values(Reqs)),
    fire(maps:keys(Mons) ++ [N || {monitor, _, N} <- maps:values(Reqs)], P1).

%% @doc The actions produced so far, in order, and the state without them.
-spec finish(proto()) -> {[fabric_peer_protocol:action()], proto()}.
finish(#p{acts = As} = P) -> {lists:reverse(As), P#p{acts = []}}.

state(#p{route = R}) ->
    maps:merge(#{asks => #{}, reqs => #{}, up => #{}, mons => #{}}, R).
