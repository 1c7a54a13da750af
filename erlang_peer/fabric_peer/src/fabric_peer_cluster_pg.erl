%% @doc The `pg' feature (docs/protocol.md 18, docs/cluster.md section 5): a client joins
%% its processes to `pg' groups of its server's cluster scope, leaves them and lists their
%% members, through its server. A client's group `Name' is `{fabric_peer_group, Name}' in
%% the scope (`Name' a binary), so any Erlang process of the cluster that joins that group
%% is a member too.
%%
%% Pure part (on the protocol state, like `fabric_peer_cluster_global', which hands this
%% module its frames, actions and calls): the shapes of `pg_join', `pg_leave', `pg_members'
%% and `pg_reply' (`classify/1'); a server's checks of a request (`dispatch/2': the group
%% against `client_groups', the process's proxy), which become a `{global, {pg, Cmd}}'
%% action; a client's requests (`request/5'), pending in the protocol's `whereis_waiting'
%% (the `whereis' ReqId space, the same end when the connection is lost), and their answers.
%%
%% Connection part: `action/2' carries a server's command out (`pg' calls, in the
%% connection process) and writes the answer; `call/4' is the client's `fabric_peer:join/3',
%% `leave/3' and `members/2'.
-module(fabric_peer_cluster_pg).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_protocol.hrl").
-include("fabric_peer_conn.hrl").

-export([classify/1, dispatch/2, request/5, features/2, action/2, call/4,
         max_groups/0, max_members/0]).
%% request/5: called by call/4 here, and by the EUnit tests directly; the limits: for the
%% test suites
-ignore_xref([request/5, max_groups/0, max_members/0]).

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [act/2]).

-type proto() :: fabric_peer_protocol:proto().

-define(CODES, [not_allowed, limit, noproc, not_member]).
%% groups per client session (counted over its proxies), members per answer (18.2)
-define(MAX_GROUPS, 64).
-define(MAX_MEMBERS, 1000).

%% @doc The number of groups a client's processes may be in (18.2).
-spec max_groups() -> pos_integer().
max_groups() -> ?MAX_GROUPS.

%% @doc The most members a `pg_members' answer carries (18.2).
-spec max_members() -> pos_integer().
max_members() -> ?MAX_MEMBERS.

%%% frames

-define(GROUP(G), is_binary(G), byte_size(G) > 0, byte_size(G) =< 255).

%% @doc The shape of a `pg' frame (section 18.2): the frame, or `unknown_frame'.
-spec classify(tuple()) -> tuple() | {error, unknown_frame}.
classify({Kind, Req, G, A} = F)
  when (Kind =:= pg_join orelse Kind =:= pg_leave), is_integer(Req), Req > 0, ?GROUP(G),
       is_integer(A), A > 0 -> F;
classify({pg_members, Req, G} = F) when is_integer(Req), Req > 0, ?GROUP(G) -> F;
classify({pg_reply, Req, ok} = F) when is_integer(Req) -> F;
classify({pg_reply, Req, {ok, Members}} = F) when is_integer(Req), is_list(Members) ->
    case lists:all(fun({T, Id}) -> (T =:= pr orelse T =:= pl) andalso is_integer(Id) andalso Id > 0;
                      (_) -> false
                   end, Members) of
        true -> F;
        false -> {error, unknown_frame}
    end;
classify({pg_reply, Req, {error, Code}} = F) when is_integer(Req), is_binary(Code) ->
    case lists:member(Code, [atom_to_binary(C) || C <- ?CODES]) of
        true -> F;
        false -> {error, unknown_frame}
    end;
classify(_) -> {error, unknown_frame}.

%% @doc The features a server offers: `pg' only with `client_groups' (18.1).
-spec features(server | client, map()) -> [binary()].
features(server, #{client_groups := false, features := F}) -> F -- [<<"pg">>];
features(_, #{features := F}) -> F.

%% @doc A `pg' frame received (classified). A frame of the other direction is
%% `unknown_frame'.
-spec dispatch(tuple(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
dispatch({pg_join, Req, G, A}, #p{o = #{role := server}, s = S} = P) ->
    case allowed(G, P) of
        false -> {ok, reply(Req, not_allowed, P)};
        true ->
            case fabric_peer_session:remote_ended(A, S) of
                true -> {ok, reply(Req, noproc, P)};
                false ->
                    case fabric_peer_payload:proxy_for(A, P) of
                        {ok, Proxy, P1} -> {ok, act({global, {pg, {join, Req, G, Proxy}}}, P1)};
                        {error, _, P1} -> {ok, reply(Req, limit, P1)}
                    end
            end
    end;
dispatch({pg_leave, Req, G, A}, #p{o = #{role := server}, s = S} = P) ->
    case allowed(G, P) of
        false -> {ok, reply(Req, not_allowed, P)};
        true ->
            case fabric_peer_session:proxy_of(A, S) of
                {ok, Proxy} -> {ok, act({global, {pg, {leave, Req, G, Proxy}}}, P)};
                error -> {ok, reply(Req, not_member, P)}
            end
    end;
dispatch({pg_members, Req, G}, #p{o = #{role := server}} = P) ->
    case allowed(G, P) of
        false -> {ok, reply(Req, not_allowed, P)};
        true -> {ok, act({global, {pg, {members, Req, G}}}, P)}
    end;
dispatch({pg_reply, Req, Result}, #p{o = #{role := client}} = P) ->
    case maps:take(Req, P#p.whereis_waiting) of
        {From, W} -> answer(From, Result, P#p{whereis_waiting = W});
        error -> {error, unknown_frame, {unknown_pg_reply, Req}, P}
    end;
dispatch(F, P) -> {error, unknown_frame, {wrong_direction, element(1, F)}, P}.

answer(From, ok, P) -> {ok, act({reply, From, ok}, P)};
answer(From, {error, Code}, P) ->
    {ok, act({reply, From, {error, binary_to_existing_atom(Code, utf8)}}, P)};
answer(From, {ok, Wire}, P) ->
    case fabric_peer_payload:rewrite_in(Wire, P) of
        {ok, Members, P1} -> {ok, act({reply, From, {ok, Members}}, P1)};
        {error, {Code, Why}, P1} -> {error, Code, Why, act({reply, From, {error, Code}}, P1)}
    end.

allowed(_, #p{o = #{client_groups := true}}) -> true;
allowed(G, #p{o = #{client_groups := L} = O, peer = Peer}) when is_list(L) ->
    lists:member(G, [to_bin(N) || N <- L]) orelse
        begin
            ?LOG_WARNING(#{what => pg_group_refused, group => G, peer => Peer,
                           code => not_allowed, scope => maps:get(cluster, O)}),
            false
        end;
allowed(_, _) -> false.

to_bin(N) when is_atom(N) -> atom_to_binary(N, utf8);
to_bin(N) when is_binary(N) -> N.

reply(Req, ok, P) -> emit(ctrl, {pg_reply, Req, ok}, P);
reply(Req, Code, P) -> emit(ctrl, {pg_reply, Req, {error, atom_to_binary(Code)}}, P).

%% @doc A client's request (`join' or `leave' with the local process `Pid', or `members'),
%% answered by the server's `pg_reply'. `leave' of a process never exported (so never
%% joined through this connection) is answered `not_member' at once.
-spec request(join | leave | members, binary(), pid() | undefined, gen_statem:from(), proto()) ->
          proto().
request(Kind, G, Pid, From, #p{mode = extended, feats = #{<<"pg">> := true},
                               connected = true, s = S} = P) ->
    Req = P#p.next_req,
    Exported = case Kind of
                   members -> {ok, none, P};
                   leave ->
                       case fabric_peer_session:export_of(Pid, S) of
                           {ok, Id} -> {ok, Id, P};
                           error -> {error, not_member}
                       end;
                   join -> fabric_peer_cluster_global:export_for(Pid, P)
               end,
    case Exported of
        {ok, A, P2} ->
            Frame = case Kind of
                        join -> {pg_join, Req, G, A};
                        leave -> {pg_leave, Req, G, A};
                        members -> {pg_members, Req, G}
                    end,
            fabric_peer_cluster_global:issue(Req, Frame, From, P2);
        {error, Code} -> act({reply, From, {error, Code}}, P)
    end;
request(_, _, _, From, #p{mode = extended, feats = #{<<"pg">> := true}} = P) ->
    act({reply, From, {error, not_connected}}, P);
request(_, _, _, From, P) -> act({reply, From, {error, not_supported}}, P).

%%% the connection process

%% @doc Carry out a server's `pg' command (in the connection process, the scope is the
%% server's `cluster'), then answer the client.
-spec action(tuple(), fabric_peer_conn:data()) -> fabric_peer_conn:data().
action({join, Req, G, Proxy}, #d{p = #p{o = #{cluster := Scope}, s = S}} = D) ->
    Group = {fabric_peer_group, G},
    Result = case lists:member(Proxy, pg:get_local_members(Scope, Group)) of
                 true -> ok;
                 false ->
                     case length(groups(Scope, S)) >= ?MAX_GROUPS of
                         true -> limit;
                         false -> pg:join(Scope, Group, Proxy)
                     end
             end,
    ?LOG_INFO(#{what => pg_join, group => G, peer => D#d.peer, result => Result}),
    with(fun(P) -> reply(Req, Result, P) end, D);
action({leave, Req, G, Proxy}, #d{p = #p{o = #{cluster := Scope}}} = D) ->
    Result = case pg:leave(Scope, {fabric_peer_group, G}, Proxy) of
                 ok -> ok;
                 not_joined -> not_member
             end,
    with(fun(P) -> reply(Req, Result, P) end, D);
action({members, Req, G}, #d{p = #p{o = #{cluster := Scope}}} = D) ->
    Members = lists:sublist(pg:get_members(Scope, {fabric_peer_group, G}), ?MAX_MEMBERS),
    with(fun(P) ->
                 case fabric_peer_payload:rewrite_out(Members, P) of
                     {ok, Wire, P1} -> emit(ctrl, {pg_reply, Req, {ok, Wire}}, P1);
                     {{error, _}, P1} -> reply(Req, limit, P1)
                 end
         end, D).

%% The client groups one of the session's proxies is in, on this node.
groups(Scope, S) ->
    [G || {fabric_peer_group, _} = G <- pg:which_groups(Scope),
          lists:any(fun(Pid) -> fabric_peer_session:proxy_id(Pid, S) =/= error end,
                    pg:get_local_members(Scope, G))].

%% @doc `fabric_peer:join/3' (`{join, Group, Pid}'), `leave/3' (`{leave, Group, Pid}') and
%% `members/2' (`{members, Group}') on a client connection.
-spec call(term(), gen_statem:from(), atom(), fabric_peer_conn:data()) ->
          gen_statem:event_handler_result(atom()).
call({Kind, G, Pid}, From, _, #d{role = client} = D)
  when (Kind =:= join orelse Kind =:= leave), ?GROUP(G), is_pid(Pid) ->
    {keep_state, with(fun(P) -> request(Kind, G, Pid, From, P) end, D)};
call({members, G}, From, _, #d{role = client} = D) when ?GROUP(G) ->
    {keep_state, with(fun(P) -> request(members, G, undefined, From, P) end, D)};
call(_, From, _, _) ->
    {keep_state_and_data, [{reply, From, {error, badarg}}]}.

with(Fun, #d{p = P} = D) ->
    {Acts, P1} = fabric_peer_route:finish(Fun(P)),
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P1}),
    D1.
