%% @doc The `global' feature (docs/protocol.md 17, docs/cluster.md section 5): a client
%% registers one of its processes under a `global' name through its server.
%%
%% Pure part (on the protocol state, like `fabric_peer_route'): the shapes of
%% `register_global', `unregister_global' and `global_reply' (`classify/1'); a server's
%% checks of a request (`dispatch/2': the name against its `register_global' option, the
%% process's proxy), which become a `{global, Cmd}' action; a client's requests
%% (`call/4'), pending in the protocol's `whereis_waiting' with its `whereis' requests
%% (same `ReqId' space, the same end when the connection is lost), and their answers.
%%
%% Connection part: `action/2' carries a server's `{global, Cmd}' out (`global' calls, in
%% the connection process) and writes the answer; `call/4' is the client's
%% `fabric_peer:register_global/3' and `unregister_global/2'.
%%
%% The frames, actions and calls of the `pg' feature (docs/protocol.md 18) come through
%% the same hooks (`{global, _}' frames and actions, `{fabric_global, _}' calls) and are
%% handed to `fabric_peer_cluster_pg'.
-module(fabric_peer_cluster_global).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_protocol.hrl").
-include("fabric_peer_conn.hrl").

-export([classify/1, dispatch/2, request/5, features/2, action/2, call/4]).
%% a request of a client to its server, answered by id (also pg's, fabric_peer_cluster_pg)
-export([export_for/2, issue/4]).
%% request/5: called by call/4 here, and by the EUnit tests directly
-ignore_xref([request/5]).

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [act/2]).

-type proto() :: fabric_peer_protocol:proto().

-define(CODES, [in_use, not_allowed, limit, noproc, not_registered]).

%%% frames

%% @doc The shape of a `global' frame (section 17.2): the frame, or `unknown_frame'.
-spec classify(tuple()) -> tuple() | {error, unknown_frame}.
classify({register_global, Req, Name, A} = F)
  when is_integer(Req), Req > 0, is_binary(Name), byte_size(Name) > 0, byte_size(Name) =< 255,
       is_integer(A), A > 0 -> F;
classify({unregister_global, Req, Name} = F)
  when is_integer(Req), Req > 0, is_binary(Name), byte_size(Name) > 0, byte_size(Name) =< 255 -> F;
classify({global_reply, Req, ok} = F) when is_integer(Req) -> F;
classify({global_reply, Req, {error, Code}} = F) when is_integer(Req), is_binary(Code) ->
    case lists:member(Code, [atom_to_binary(C) || C <- ?CODES]) of
        true -> F;
        false -> {error, unknown_frame}
    end;
classify(_) -> {error, unknown_frame}.

%% @doc The features a server offers: `global' only with `register_global' (17.1).
-spec features(server | client, map()) -> [binary()].
features(server, #{register_global := false, features := F} = M) ->
    fabric_peer_cluster_pg:features(server, M#{features := F -- [<<"global">>]});
features(Role, M) -> fabric_peer_cluster_pg:features(Role, M).

%% @doc A `global' frame received (classified). A frame of the other direction is
%% `unknown_frame'.
-spec dispatch(tuple(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
dispatch(F, P) when element(1, F) =:= pg_join; element(1, F) =:= pg_leave;
                    element(1, F) =:= pg_members; element(1, F) =:= pg_reply ->
    fabric_peer_cluster_pg:dispatch(F, P);
dispatch({register_global, Req, NameBin, A}, #p{o = #{role := server}, s = S} = P) ->
    case name(NameBin, P) of
        {ok, Name, P1} ->
            case fabric_peer_session:remote_ended(A, S) of
                true -> {ok, reply(Req, noproc, P1)};
                false ->
                    case fabric_peer_payload:proxy_for(A, P1) of
                        {ok, Proxy, P2} -> {ok, act({global, {register, Req, Name, Proxy}}, P2)};
                        {error, _, P2} -> {ok, reply(Req, limit, P2)}
                    end
            end;
        {error, Code, P1} -> {ok, reply(Req, Code, P1)}
    end;
dispatch({unregister_global, Req, NameBin}, #p{o = #{role := server}} = P) ->
    case catch binary_to_existing_atom(NameBin, utf8) of
        Name when is_atom(Name) -> {ok, act({global, {unregister, Req, Name}}, P)};
        _ -> {ok, reply(Req, not_registered, P)}
    end;
dispatch({global_reply, Req, Result}, #p{o = #{role := client}} = P) ->
    case maps:take(Req, P#p.whereis_waiting) of
        {From, W} ->
            Reply = case Result of
                        ok -> ok;
                        {error, Code} -> {error, binary_to_existing_atom(Code, utf8)}
                    end,
            {ok, act({reply, From, Reply}, P#p{whereis_waiting = W})};
        error -> {error, unknown_frame, {unknown_global_reply, Req}, P}
    end;
dispatch(F, P) -> {error, unknown_frame, {wrong_direction, element(1, F)}, P}.

%% The name a client asks for, as the server's `register_global' allows it: an existing
%% atom, or (with `true') a new one within the connection's atom budget.
name(NameBin, #p{o = #{register_global := Allowed}} = P) ->
    case catch binary_to_existing_atom(NameBin, utf8) of
        Name when is_atom(Name) -> check(Name, Allowed, P);
        _ when Allowed =:= true ->
            case min(P#p.atoms_left, fabric_peer_payload:server_atoms_left(P)) > 0 andalso
                is_binary(unicode:characters_to_binary(NameBin)) of
                true ->
                    check(binary_to_atom(NameBin, utf8), true,
                          fabric_peer_payload:spend_atoms(1, P));
                false -> {error, limit, P}
            end;
        _ -> {error, not_allowed, P}
    end.

check(Name, Allowed, P) ->
    Names = case Allowed of
                true -> [Name];
                L when is_list(L) -> L
            end,
    case fabric_peer_policy:check(Name, fabric_peer_policy:new(Names, [])) of
        ok -> {ok, Name, P};
        {error, _} ->
            ?LOG_WARNING(#{what => register_global_refused, name => Name, peer => P#p.peer,
                           code => not_allowed}),
            {error, not_allowed, P}
    end.

reply(Req, ok, P) -> emit(ctrl, {global_reply, Req, ok}, P);
reply(Req, Code, P) -> emit(ctrl, {global_reply, Req, {error, atom_to_binary(Code)}}, P).

%% @doc A client's request (`register' with the local process `Pid', or `unregister'),
%% answered by the server's `global_reply'.
-spec request(register | unregister, atom(), pid() | undefined, gen_statem:from(), proto()) -> proto().
request(Kind, Name, Pid, From, #p{mode = extended, feats = #{<<"global">> := true},
                                  connected = true} = P) ->
    Req = P#p.next_req,
    Exported = case Kind of
                   unregister -> {ok, none, P};
                   register -> export_for(Pid, P)
               end,
    case Exported of
        {ok, A, P2} ->
            NameBin = atom_to_binary(Name, utf8),
            Frame = case Kind of
                        register -> {register_global, Req, NameBin, A};
                        unregister -> {unregister_global, Req, NameBin}
                    end,
            issue(Req, Frame, From, P2);
        {error, limit} -> act({reply, From, {error, limit}}, P)
    end;
request(_, _, _, From, #p{mode = extended, feats = #{<<"global">> := true}} = P) ->
    act({reply, From, {error, not_connected}}, P);
request(_, _, _, From, P) -> act({reply, From, {error, not_supported}}, P).

%% @doc The id a request names the local process `Pid' by: its export, made now if need
%% be; `{error, limit}' when that would pass `max_exports'.
-spec export_for(pid(), proto()) -> {ok, integer(), proto()} | {error, limit}.
export_for(Pid, #p{s = S, o = O} = P) ->
    case fabric_peer_session:export_of(Pid, S) of
        {ok, Id} -> {ok, Id, P};
        error ->
            case fabric_peer_session:export_count(S) < maps:get(max_exports, O) of
                true ->
                    {Id, P1} = fabric_peer_payload:export(Pid, P),
                    {ok, Id, P1};
                false -> {error, limit}
            end
    end.

%% @doc Write request `Frame' (its id `Req', the connection's next) and keep `From' waiting
%% for the answer that carries `Req'.
-spec issue(non_neg_integer(), tuple(), gen_statem:from(), proto()) -> proto().
issue(Req, Frame, From, P) ->
    P1 = emit(ctrl, Frame, P#p{next_req = Req + 1}),
    P1#p{whereis_waiting = (P1#p.whereis_waiting)#{Req => From}}.

%%% the connection process

%% @doc Carry out a server's `{global, Cmd}' action: register or unregister in `global',
%% then answer the client.
-spec action(tuple(), fabric_peer_conn:data()) -> fabric_peer_conn:data().
action({pg, Cmd}, D) -> fabric_peer_cluster_pg:action(Cmd, D);
action({register, Req, Name, Proxy}, D) ->
    Result = case global:whereis_name(Name) of
                 Proxy -> ok;
                 undefined ->
                     %% after a partition heals, the loser is told (17.2), not killed
                     case global:register_name(Name, Proxy, fun global:random_notify_name/3) of
                         yes -> ok;
                         no -> in_use
                     end;
                 _ -> in_use
             end,
    ?LOG_INFO(#{what => register_global, name => Name, peer => D#d.peer, result => Result}),
    with(fun(P) -> reply(Req, Result, P) end, D);
action({unregister, Req, Name}, D) ->
    Result = case global:whereis_name(Name) of
                 Pid when is_pid(Pid) ->
                     case fabric_peer_registry:proxy_conn(Pid) =:= self() of
                         true -> _ = global:unregister_name(Name), ok;
                         false -> not_registered
                     end;
                 _ -> not_registered
             end,
    with(fun(P) -> reply(Req, Result, P) end, D).

%% @doc `fabric_peer:register_global/3' (`{register, Name, Pid}') and
%% `unregister_global/2' (`{unregister, Name}') on a client connection.
-spec call(term(), gen_statem:from(), atom(), fabric_peer_conn:data()) ->
          gen_statem:event_handler_result(atom()).
call({pg, Cmd}, From, State, D) -> fabric_peer_cluster_pg:call(Cmd, From, State, D);
call({register, Name, Pid}, From, _, #d{role = client} = D) when is_atom(Name), is_pid(Pid) ->
    {keep_state, with(fun(P) -> request(register, Name, Pid, From, P) end, D)};
call({unregister, Name}, From, _, #d{role = client} = D) when is_atom(Name) ->
    {keep_state, with(fun(P) -> request(unregister, Name, undefined, From, P) end, D)};
call(_, From, _, _) ->
    {keep_state_and_data, [{reply, From, {error, badarg}}]}.

with(Fun, #d{p = P} = D) ->
    {Acts, P1} = fabric_peer_route:finish(Fun(P)),
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P1}),
    D1.
