%% @doc What a connection process does for `route' (docs/protocol.md 16), called from small
%% hooks of `fabric_peer_conn' and the lifecycles: the `{route, Cmd}' actions of the
%% protocol (`fabric_peer_route'), the `{fabric_route, Event}' messages between the
%% connections of one routing server, a client's route calls (`fabric_peer:nodes/1',
%% `monitor_node/3', `whereis/2' with a node), and a server connection's place in the node
%% table (`fabric_peer_router': claim at frame 4, up, down, release, the grace period).
%%
%% Between connections of one server, a routed message is the Erlang message
%% `{fabric_route, {msg, Name, Msg, Notify}}' to the target client's connection, which
%% sends it on its hop as any message of the server (so both hops rewrite pids as in
%% section 4, and messages from one connection to one client keep their order). It waits
%% there for that hop's outbox room and credit without a timeout; with `credit' on the
%% sender's hop, `Notify' is `{Conn, {fabric_route, issued, {Target, Dest}}}' and the
%% target answers once the message was issued (or refused), so that the sender's credit
%% for `Dest' comes back only then (16.8): a slow process at the target holds the sender
%% back, and what the server holds for it is bounded by the sender's windows.
-module(fabric_peer_route_conn).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_conn.hrl").

-export([env/2, established/1, action/2, info/3, call/4, own_heartbeat/2,
         claim/3, move/3, up/1, down/1, release/1, grace/1]).

%% How long a routing server waits for another client's whereis answer (16.5).
-define(WHEREIS_TIMEOUT, 5000).

%%% the protocol's env

%% @doc The `route' entry of a server connection's protocol env (none when not routing).
-spec env(reference(), map()) -> map().
env(Ref, O) ->
    case fabric_peer_router:enabled(O) of
        true ->
            #{route => fun(NodeBin) -> fabric_peer_router:target(Ref, O, self(), NodeBin) end};
        false -> #{}
    end.

%% @doc The connection is established: a client that agreed `route' asks for the node set.
-spec established(fabric_peer_conn:data()) -> fabric_peer_conn:data().
established(D) -> with(fun fabric_peer_route:established/1, D).

%%% actions

%% @doc Carry out a `{route, Cmd}' action of the protocol.
-spec action(tuple(), fabric_peer_conn:data()) -> fabric_peer_conn:data().
action({msg, Conn, Name, Msg, Dest}, #d{p = P} = D) ->
    %% `Dest' none: nothing owed for it (another server's client, section 15)
    Notify = case Dest =/= none andalso fabric_peer_protocol:credit_on(P) of
                 true -> {self(), {fabric_route, issued, {Conn, Dest}}};
                 false -> none
             end,
    Conn ! {fabric_route, {msg, Name, Msg, Notify}},
    D;
action({mc, Conn, Name, Msg, Ref}, D) ->
    %% the target connection is monitored until it answers: if it ends first (its server's
    %% node lost: noconnection), the sender's `Ref' is answered at once (16.8)
    MRef = erlang:monitor(process, Conn, [{tag, {fabric_route, mc_down, Ref}}]),
    Conn ! {fabric_route, {mc, Name, Msg, {self(), {fabric_route, mc, {Ref, MRef}}}}},
    D;
action({whereis_node, Tag, Name, Node}, #d{ref = Ref, o = O} = D) ->
    Answer = {fabric_route, whereis, Tag},
    case fabric_peer_router:target(Ref, O, self(), Node) of
        {ok, Conn} ->
            Conn ! {fabric_route, {whereis, Name, {self(), Answer}}},
            _ = erlang:send_after(?WHEREIS_TIMEOUT, self(), {Answer, undefined});
        not_allowed ->
            ?LOG_WARNING(#{what => whereis_refused, peer => D#d.peer, name => Name, node => Node,
                           reason => routing}, ?FABRIC_LOG),
            self() ! {Answer, undefined};
        none -> self() ! {Answer, undefined}
    end,
    D;
action({nodes, Req}, #d{ref = Ref, o = O} = D) ->
    Nodes = fabric_peer_router:visible(Ref, O, self()),
    with(fun(P) -> fabric_peer_route:nodes_reply(Req, Nodes, P) end, D).

%%% messages

%% @doc A `{fabric_route, Event}' message, or the answer to a request of ours to another
%% connection (`{{fabric_route, Kind, Tag}, Result}').
-spec info(term(), atom(), fabric_peer_conn:data()) -> gen_statem:event_handler_result(atom()).
info({fabric_route, {msg, Name, Msg, Notify}}, _, #d{p = P} = D) ->
    {Acts, P2} = case fabric_peer_protocol:send(Name, Msg, {relay, Notify}, P) of
                     {{error, Why} = E, A, P1} ->
                         %% refused on this hop (e.g. `overflow': max_pending_messages wait
                         %% for this client's credit): logged and counted, not lost silently
                         ?LOG_WARNING(#{what => routed_message_dropped, peer => D#d.peer,
                                        name => Name, reason => Why}, ?FABRIC_LOG),
                         {A ++ notify(Notify, E), fabric_peer_protocol:count(local_errors, P1)};
                     %% the answer comes when it is issued
                     {wait, A, P1} -> {A, P1};
                     {ok, A, P1} -> {A ++ notify(Notify, ok), P1}
                 end,
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P2}),
    {keep_state, D1};
info({{fabric_route, issued, {Conn, Dest}}, _}, _, D) ->
    {keep_state, with(fun(P) -> fabric_peer_flowctl:issued({route, Conn, Dest}, P) end, D)};
info({fabric_route, {mc, Name, Msg, From}}, _, #d{p = P} = D) ->
    case fabric_peer_protocol:send_confirmed(Name, Msg, From, P) of
        {{error, not_supported}, _, _} ->
            %% no acks on this hop: a plain m, `ok' once it is written (16.8)
            {_, Acts, P1} = fabric_peer_protocol:send(Name, Msg, none, P),
            {Written, D1} = fabric_peer_conn:run(Acts, D#d{p = P1}),
            gen_statem:reply(From, Written),
            {keep_state, D1};
        {Reply, Acts, P1} ->
            {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P1}),
            _ = [gen_statem:reply(From, Reply) || Reply =/= wait],
            {keep_state, D1}
    end;
info({fabric_route, {whereis, Name, From}}, established, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:whereis(Name, From, P), D)};
info({fabric_route, {whereis, _, From}}, _, _) ->
    gen_statem:reply(From, undefined),
    keep_state_and_data;
info({fabric_route, {notice, Notice}}, _, D) ->
    {keep_state, with(fun(P) -> fabric_peer_route:notice(Notice, P) end, D)};
info({fabric_route, {unexport, Pids}}, _, D) ->
    {keep_state, with(fun(P) -> fabric_peer_route:unexport(Pids, P) end, D)};
info({{fabric_route, whereis, Tag}, Result}, _, D) ->
    {keep_state, with(fun(P) -> fabric_peer_route:whereis_answer(Tag, Result, P) end, D)};
info({{fabric_route, mc, {Ref, MRef}}, Result}, _, D) ->
    erlang:demonitor(MRef, [flush]),
    Wire = case Result of
               ok -> ok;
               {error, C} when is_binary(C) -> {error, C};
               {error, C} when is_atom(C) -> {error, atom_to_binary(C, utf8)};
               {error, T} when is_tuple(T), is_atom(element(1, T)) ->
                   {error, atom_to_binary(element(1, T), utf8)};
               _ -> {error, <<"noproc">>}
           end,
    {keep_state, with(fun(P) -> fabric_peer_commands:emit(ctrl, {mc_result, Ref, Wire}, P) end, D)};
info({{fabric_route, mc_down, Ref}, _, process, _, Why}, _, #d{peer = Peer} = D) ->
    %% the target connection ended without answering: its node is gone (Erlang's
    %% noconnection), or it failed
    Code = case Why of
               noconnection -> <<"noconnection">>;
               _ -> <<"noproc">>
           end,
    ?LOG_INFO(#{what => routed_confirm_failed, peer => Peer, reason => Why,
                text => "the connection of a routed confirmed send's target ended before "
                        "answering"}, ?FABRIC_LOG),
    {keep_state, with(fun(P) -> fabric_peer_commands:emit(ctrl, {mc_result, Ref, {error, Code}}, P) end, D)};
info(_, _, _) -> keep_state_and_data.

%%% calls (a client of ours)

%% @doc `fabric_peer:nodes/1', `monitor_node/3' and `whereis/2,3' with `{Name, Node}'.
-spec call(term(), gen_statem:from(), atom(), fabric_peer_conn:data()) ->
          gen_statem:event_handler_result(atom()).
call(nodes, From, _, D) ->
    {keep_state, with(fun(P) -> fabric_peer_route:nodes(From, P) end, D)};
call({monitor_node, Pid, Node, Flag}, From, _, #d{p = P} = D) when is_boolean(Flag), is_atom(Node) ->
    {Reply, P1} = fabric_peer_route:monitor_node(Pid, atom_to_binary(Node, utf8), Flag, P),
    {keep_state, with(fun(X) -> X end, D#d{p = P1}), [{reply, From, Reply}]};
call({whereis, Name, Node}, From, State, #d{peer_node = PeerNode} = D)
  when is_atom(Name), is_atom(Node) ->
    NameBin = atom_to_binary(Name, utf8),
    case atom_to_binary(Node, utf8) of
        PeerNode -> fabric_peer_conn:handle_common({call, From}, {whereis, NameBin}, State, D);
        NodeBin ->
            {keep_state, with(fun(P) -> fabric_peer_route:whereis_node(NameBin, NodeBin, From, P) end, D)}
    end;
call(_, From, _, _) ->
    {keep_state_and_data, [{reply, From, {error, badarg}}]}.

%% @doc A client that agreed `route' sends heartbeats at the interval it announced (16.1).
-spec own_heartbeat(map(), map()) -> map().
own_heartbeat(#{own_heartbeat := H}, O) -> O#{heartbeat => H};
own_heartbeat(_, O) -> O.

%%% a server connection in the node table

%% @doc Frame 4 of a client with `Params': may it hold its node name (16.1)? `Claimant' is
%% the process that will own the session.
-spec claim(map(), pid(), fabric_peer_conn:data()) -> ok | node_in_use.
claim(#{features := Feats, peer_node := Node}, Claimant, #d{ref = Ref, o = O}) ->
    case lists:member(<<"route">>, Feats) of
        true ->
            %% unique across the servers of a cluster too (docs/cluster.md section 3)
            case fabric_peer_cluster:claim(O, Node, Claimant) of
                %% a session resumed from another server is this connection's until it
                %% is handed over (fabric_peer_cluster_relay)
                ok when node(Claimant) =/= node() -> fabric_peer_router:claim(Ref, Node, self(), O);
                ok -> fabric_peer_router:claim(Ref, Node, Claimant, O);
                node_in_use -> node_in_use
            end;
        false -> ok
    end.

%% @doc The session `claim/3' was made for is not resumed: this connection holds the name.
-spec move(map(), pid(), fabric_peer_conn:data()) -> ok.
move(#{features := Feats, peer_node := Node}, From, #d{ref = Ref}) ->
    case lists:member(<<"route">>, Feats) of
        true -> fabric_peer_router:move(Ref, Node, From, self());
        false -> ok
    end.

%% @doc This server connection is established (new or resumed): `nodeup'.
-spec up(fabric_peer_conn:data()) -> ok.
up(#d{ref = Ref, o = O}) ->
    case fabric_peer_router:enabled(O) of
        true ->
            ok = fabric_peer_router:up(Ref, self(), O),
            fabric_peer_cluster:up(O, fabric_peer_router:own_node(Ref, self()));
        false -> ok
    end.

%% @doc This server connection lost its client: `nodedown'.
-spec down(fabric_peer_conn:data()) -> ok.
down(#d{ref = Ref, o = O}) ->
    case fabric_peer_router:enabled(O) of
        true ->
            ok = fabric_peer_cluster:down(O, fabric_peer_router:own_node(Ref, self())),
            fabric_peer_router:down(Ref, self(), O);
        false -> ok
    end.

%% @doc This server connection ends.
-spec release(fabric_peer_conn:data()) -> ok.
release(#d{ref = Ref, o = O}) ->
    case fabric_peer_router:enabled(O) of
        true -> fabric_peer_router:release(Ref, self(), O);
        false -> ok
    end.

%% @doc `route_grace' after this connection lost its client (16.4): the other connections
%% end their exports of our proxies with `noconnection'.
-spec grace(fabric_peer_conn:data()) -> ok.
grace(#d{ref = Ref, p = P, o = O} = D) ->
    Proxies = fabric_peer_route:proxies(P),
    ?LOG_INFO(#{what => route_grace_ended, peer => D#d.peer, processes => length(Proxies),
                text => "not resumed within route_grace: its processes end (noconnection) at "
                        "the other clients"}, ?FABRIC_LOG),
    _ = [C ! {fabric_route, {unexport, Proxies}} || Proxies =/= [],
         C <- fabric_peer_router:conns(Ref), C =/= self()],
    fabric_peer_cluster:grace(O, Proxies).

%%% internals

notify(none, _) -> [];
notify(Notify, Result) -> [{reply, Notify, Result}].

with(Fun, #d{p = P} = D) ->
    {Acts, P1} = fabric_peer_route:finish(Fun(P)),
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P1}),
    D1.

apply_result({Acts, P}, D) ->
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P}),
    D1.
