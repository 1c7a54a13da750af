%% @doc Names across the connection (docs/protocol.md 4.1, 6), without I/O: where the
%% destination of an incoming message goes (an exported id, a local name under the name
%% policy, `{Name, Node}', routed by `fabric_peer_route' at a routing server), and
%% `whereis' both ways (the peer's requests answered, ours sent and their replies given to
%% the waiting callers). Works on the protocol state of `fabric_peer_protocol' and returns
%% actions like it.
-module(fabric_peer_names).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_protocol.hrl").

-export([resolve/2, whereis_in/3, reply_in/3, whereis/3, reply_waiters/2]).

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [export/2, remote_pid/2, act/2]).

-type proto() :: fabric_peer_protocol:proto().

%% A destination resolved: a pid, `{Name, Node}' for the local VM to send to, or another
%% client of a routing server.
-type target() :: pid() | {atom(), atom()} | {route, pid(), atom()}.

%%% destinations

%% @doc Where a message to `Dest' goes: `{ok, Target}', `drop' (silently: the process
%% ended or the name is not registered), or refused (an error of section 9, logged once
%% by `fabric_peer_protocol' as the frame dropped, `code => not_allowed').
-spec resolve(term(), proto()) -> {ok, target()} | drop | {error, atom(), term()}.
resolve(Id, #p{s = S}) when is_integer(Id) ->
    case fabric_peer_session:exported(Id, S) of
        {ok, Pid} -> {ok, Pid};
        error ->
            case fabric_peer_session:issued(Id, S) of
                %% issued, and the process ended since: the peer has not seen its DEAD yet
                true -> drop;
                false -> {error, unknown_id, Id}
            end
    end;
resolve(Name, P) when is_atom(Name) -> resolve_name(Name, P);
resolve({Name, Node} = Dest, #p{o = O} = P) ->
    case fabric_peer_route:resolve(Dest, P) of
        pass -> resolve_node(Name, Node, O, P);
        Routed -> Routed
    end.

resolve_node(Name, Node, O, P) ->
    case fabric_peer_policy:check_node(Node, maps:get(routable_nodes, O), maps:get(node, O)) of
        local -> resolve_name(Name, P);
        {remote, N} ->
            case check_name(Name, P) of
                ok -> {ok, {Name, N}};
                Err -> Err
            end;
        {error, not_allowed} -> {error, not_allowed, {Name, Node}}
    end.

resolve_name(Name, #p{env = #{whereis := Whereis}} = P) ->
    case check_name(Name, P) of
        ok ->
            case Whereis(Name) of
                Pid when is_pid(Pid) -> {ok, Pid};
                _ ->
                    ?LOG_DEBUG(#{what => unregistered_name, peer => P#p.peer, name => Name,
                                 then => drop}, ?FABRIC_LOG),
                    drop
            end;
        Err -> Err
    end.

check_name(Name, P) ->
    case fabric_peer_policy:check(Name, policy(P)) of
        ok -> ok;
        {error, _} -> {error, not_allowed, Name}
    end.

%% The handle's policy as `allow/2' left it (the registry), or the one of our settings.
policy(#p{env = #{policy := Get}, o = O}) ->
    case Get() of
        undefined -> fabric_peer_policy:new(maps:get(allowed, O), maps:get(force_system_names, O));
        Policy -> Policy
    end.

%% A name from the peer as the logs show it (at most 255 bytes).
trim(<<B:255/binary, _/binary>>) -> B;
trim(B) -> B.

%%% whereis

%% @doc The peer's `{whereis, Req, NameBin}': answered with `{pr, Id}' (the process
%% exported) or `undefined' (not registered, refused by the policy, max_exports reached).
-spec whereis_in(pos_integer(), binary(), proto()) -> proto().
whereis_in(Req, NameBin, P) ->
    {Result, P1} = whereis_local(NameBin, P),
    emit(ctrl, {whereis_reply, Req, Result}, P1).

whereis_local(NameBin, #p{o = O, s = S, env = #{whereis := Whereis}} = P) ->
    Name = try binary_to_existing_atom(NameBin, utf8) catch error:_ -> undefined end,
    case Name =/= undefined andalso fabric_peer_policy:check(Name, policy(P)) of
        ok ->
            case Whereis(Name) of
                Pid when is_pid(Pid) ->
                    case fabric_peer_session:export_of(Pid, S) of
                        {ok, Id} -> {{pr, Id}, P};
                        error ->
                            case fabric_peer_session:export_count(S) < maps:get(max_exports, O) of
                                true ->
                                    {Id, P1} = export(Pid, P),
                                    {{pr, Id}, P1};
                                false ->
                                    ?LOG_WARNING(#{what => whereis_not_answered, peer => P#p.peer,
                                                   name => Name, reason => max_exports}, ?FABRIC_LOG),
                                    {undefined, P}
                            end
                    end;
                _ -> {undefined, P}
            end;
        _ ->
            ?LOG_WARNING(#{what => whereis_refused, peer => P#p.peer, name => trim(NameBin),
                           text => "not an allowed name"}, ?FABRIC_LOG),
            {undefined, P}
    end.

%% @doc The peer's `{whereis_reply, Req, Result}' to one of our requests: its caller gets
%% the proxy or `undefined'.
-spec reply_in(pos_integer(), term(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
reply_in(Req, Result, P) ->
    case maps:take(Req, P#p.whereis_waiting) of
        {From, W} ->
            P1 = P#p{whereis_waiting = W},
            case Result of
                {pr, Id} when is_integer(Id), Id > 0 ->
                    case remote_pid(Id, P1) of
                        {ok, Pid, P2} -> {ok, act({reply, From, Pid}, P2)};
                        {error, Why, P2} ->
                            {error, limit, Why, act({reply, From, {error, {limit, max_proxies}}}, P2)}
                    end;
                undefined -> {ok, act({reply, From, undefined}, P1)};
                _ ->
                    {error, bad_payload, bad_whereis_reply, act({reply, From, {error, bad_reply}}, P1)}
            end;
        %% nobody asked (a waiting caller stays waiting until its reply or the end of the
        %% connection, so a late reply is still known): a protocol error (section 9)
        error -> {error, unknown_frame, {unknown_whereis_reply, Req}, P}
    end.

%% @doc `fabric_peer:whereis/3' in the established state, name already a binary: asked
%% (with `whereis' agreed) or `{error, not_supported}'.
-spec whereis(binary(), gen_statem:from(), proto()) -> proto().
whereis(NameBin, From, #p{mode = extended, feats = #{<<"whereis">> := true}} = P) ->
    Req = P#p.next_req,
    P1 = emit(ctrl, {whereis, Req, NameBin}, P#p{next_req = Req + 1}),
    P1#p{whereis_waiting = (P1#p.whereis_waiting)#{Req => From}};
whereis(_, From, P) -> act({reply, From, {error, not_supported}}, P).

%% @doc Every waiting `whereis' caller gets `Reply' (the socket is gone, or the connection
%% ends); the requests stay recorded (the caller clears them).
-spec reply_waiters(term(), proto()) -> proto().
reply_waiters(Reply, #p{whereis_waiting = W} = P) ->
    lists:foldl(fun(From, Acc) -> act({reply, From, Reply}, Acc) end, P, maps:values(W)).
