%% @doc The server side of one connection: a `gen_statem' that takes over an accepted
%% socket, runs the server handshake (legacy MD5 or extended HMAC, docs/protocol.md 2-3)
%% and then serves the established connection (`fabric_peer_conn:handle_common/4').
%%
%% States: `wait_socket' (the acceptor still owns the socket), `await_hello',
%% `await_response', `established', and with the `session' feature `detached' (the socket is
%% gone; the session waits `session_timeout' for its client) and `resuming' (a resuming
%% client's new connection claimed the session and hands its authenticated socket over).
%% Proxies keep their identity across a resume.
-module(fabric_peer_server).
-behaviour(gen_statem).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_conn.hrl").

-export([start_link/2, lost/2, socket_gone/3]).
%% start_link/2: by its child spec (fabric_peer_conn_sup); lost/2 and socket_gone/3: by
%% fabric_peer_conn through the role module of the connection
-ignore_xref([start_link/2, lost/2, socket_gone/3]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3, code_change/4]).

%% A claimed session waits this long for the resuming connection to hand its socket over.
-define(ATTACH_TIMEOUT, 10000).

-import(fabric_peer_conn, [raw_send/2, drop_socket/1]).

%% @doc Start the server side of an accepted socket (owned by the caller until
%% `fabric_peer_conn:socket_ready/1').
-spec start_link(map(), term()) -> {ok, pid()} | {error, term()}.
start_link(Ctx, Sock) -> gen_statem:start_link(?MODULE, {Ctx, Sock}, []).

%% @private
-spec callback_mode() -> gen_statem:callback_mode_result().
callback_mode() -> handle_event_function.

%% @private
-spec init({map(), term()}) -> gen_statem:init_result(atom()).
init({O, Sock}) ->
    process_flag(trap_exit, true),
    logger:update_process_metadata(?FABRIC_LOG),
    {ok, wait_socket, (fabric_peer_conn:new_data(server, O))#d{sock = Sock}}.

%% @private
-spec handle_event(gen_statem:event_type(), term(), atom(), #d{}) ->
          gen_statem:event_handler_result(atom()).

%%% --- socket hand-off and handshake

handle_event(cast, socket_ready, wait_socket, #d{t = T, sock = S0, o = O, ref = Ref} = D) ->
    HsTimeout = maps:get(handshake_timeout, O),
    Ip = case fabric_peer_transport:peer_ip(T, S0) of {ok, A} -> A; error -> undefined end,
    Blocked = case Ip of
                  undefined -> 0;
                  _ -> fabric_peer_throttle:blocked(Ref, Ip, O)
              end,
    ok = fabric_peer_admission:reading(O, T, S0),
    case Blocked > 0 orelse fabric_peer_transport:handshake(T, S0, HsTimeout) of
        true ->
            ?LOG_WARNING(#{what => connection_refused, peer => inet:ntoa(Ip),
                           reason => too_many_failed_authentications, blocked_ms => Blocked},
                         ?FABRIC_LOG),
            fabric_peer_transport:close(T, S0),
            {stop, normal, D#d{sock = undefined}};
        {ok, S} ->
            D1 = D#d{sock = S, peer = fabric_peer_transport:peername(T, S), peer_ip = Ip},
            ok = fabric_peer_conn:activate(D1),
            {next_state, await_hello, D1, [{{timeout, handshake}, HsTimeout, handshake}]};
        {error, Why} ->
            ?LOG_INFO(#{what => transport_handshake_failed, reason => Why}, ?FABRIC_LOG),
            {stop, normal, D}
    end;

handle_event(internal, {frame, Bin}, await_hello, D0) ->
    #d{o = O} = D = fabric_peer_conn:count_in(D0),
    Rand = #{nonce => crypto:strong_rand_bytes(32),
             challenge => fabric_peer_handshake:legacy_challenge()},
    case fabric_peer_server_hs:hello(Bin, O, Rand) of
        {send, F2, Hs} -> hs_send(F2, await_response, D#d{hs = Hs});
        {refuse, Why} ->
            ?LOG_WARNING(#{what => handshake_refused, peer => D#d.peer, reason => Why},
                         ?FABRIC_LOG),
            {stop, normal, D}
    end;

handle_event(internal, {frame, F3}, await_response, D0) ->
    #d{o = O, hs = Hs, peer = Peer} = D = fabric_peer_conn:count_in(D0),
    case fabric_peer_server_hs:response(F3, Hs, O, Peer) of
        {legacy, F4} ->
            case raw_send(F4, D) of
                {ok, D1} -> fabric_peer_conn:established(#{mode => legacy}, false, D1);
                {{error, _}, D1} -> {stop, normal, D1}
            end;
        {extended, Params, Resume} -> session(Params, Resume, F3, D);
        failed -> auth_failed(D)
    end;

handle_event({timeout, handshake}, handshake, State, D)
  when State =:= await_hello; State =:= await_response ->
    ?LOG_WARNING(#{what => handshake_timeout, peer => D#d.peer}, ?FABRIC_LOG),
    fabric_peer_throttle:timed_out(D#d.ref, D#d.peer_ip, D#d.o),
    case State of
        await_response -> _ = raw_send(fabric_peer_server_hs:failure(), D);
        _ -> ok
    end,
    {stop, normal, D};
handle_event({timeout, handshake}, _, _, _) -> keep_state_and_data;
handle_event({timeout, route_grace}, grace, detached, D) ->
    ok = fabric_peer_route_conn:grace(D),
    keep_state_and_data;
handle_event({timeout, route_grace}, _, _, _) -> keep_state_and_data;

%%% --- sessions

handle_event(state_timeout, expire, State, #d{p = P} = D) when State =:= detached; State =:= resuming ->
    ?LOG_INFO(#{what => session_expired, peer => D#d.peer}, ?FABRIC_LOG),
    {stop, normal, D#d{p = fabric_peer_protocol:set_end_reason(session_expired, P)}};
handle_event(cast, expire_session, detached, #d{p = P} = D) ->
    ?LOG_INFO(#{what => session_expired, peer => D#d.peer, reason => max_kept_sessions},
              ?FABRIC_LOG),
    {stop, normal, D#d{p = fabric_peer_protocol:set_end_reason(session_expired, P)}};
handle_event({call, From}, {claim, _NewConn, Feats, PeerCount}, State, #d{p = P} = D)
  when State =:= established; State =:= detached; State =:= resuming ->
    %% the connection still using the session ends first (docs/protocol.md 11.5): its
    %% frames handled so far are final, the rest of its input is discarded
    unkeep_session(D),
    D1 = drop_socket(D#d{p = fabric_peer_protocol:detach(P)}),
    case fabric_peer_protocol:resumable(Feats, PeerCount, D1#d.p) of
        {ok, Received} ->
            {next_state, resuming, D1, [{reply, From, {ok, Received}},
                                        {state_timeout, ?ATTACH_TIMEOUT, expire},
                                        {{timeout, heartbeat}, cancel}]};
        not_resumable ->
            ?LOG_WARNING(#{what => session_not_resumable, peer => D#d.peer,
                           text => "the session cannot be resumed losslessly (features or "
                                   "counts differ): it ends"}, ?FABRIC_LOG),
            gen_statem:reply(From, {error, not_resumable}),
            {stop, normal, D1#d{p = fabric_peer_protocol:set_end_reason(not_resumable, D1#d.p)}}
    end;
handle_event({call, From}, {claim, _}, _, _) ->
    {keep_state_and_data, [{reply, From, {error, not_resumable}}]};
handle_event(cast, {attach, T, S, Peer, Params}, resuming, D) ->
    D1 = D#d{t = T, sock = S, peer = Peer, buf = <<>>},
    ?LOG_INFO(#{what => session_resumed, peer => Peer}, ?FABRIC_LOG),
    ok = fabric_peer_route_conn:up(D1),
    fabric_peer_conn:established(Params, true, D1);
handle_event(cast, {attach, T, S, _, _}, _, _) ->
    fabric_peer_transport:close(T, S),
    keep_state_and_data;

handle_event(Type, Event, State, D) ->
    fabric_peer_conn:handle_common(Type, Event, State, D).

%% @private
-spec terminate(term(), atom(), #d{}) -> ok.
terminate(_Reason, _State, #d{ref = Ref} = D) ->
    unkeep_session(D),
    ok = fabric_peer_route_conn:release(D),
    D1 = fabric_peer_conn:terminate(D),
    case D1#d.session of
        undefined -> ok;
        Sid -> ok = fabric_peer_registry:unregister_session(Ref, Sid, self())
    end.

%% @private
-spec code_change(term(), atom(), #d{}, term()) -> {ok, atom(), #d{}}.
code_change(_, State, D, _) -> {ok, State, D}.

%%% --- losing the socket

%% @doc The socket of the established connection is gone. With a session (and unless we
%% closed it) the session is kept for `session_timeout'; otherwise the connection ends.
-spec lost(#d{}, term()) -> gen_statem:event_handler_result(atom()).
lost(D0, Why) ->
    D = fabric_peer_conn:lost(D0),
    ok = fabric_peer_route_conn:down(D),
    case D#d.session =/= undefined andalso Why =/= closed_by_us of
        true ->
            ?LOG_INFO(#{what => connection_lost, peer => D#d.peer, reason => Why,
                        then => keep_session}, ?FABRIC_LOG),
            keep_session(D),
            {next_state, detached, D,
             [{state_timeout, maps:get(session_timeout, D#d.o), expire},
              {{timeout, heartbeat}, cancel}
              | [{{timeout, route_grace}, maps:get(route_grace, D#d.o), grace}
                 || fabric_peer_router:enabled(D#d.o)]]};
        false ->
            {stop, normal, D}
    end.

%% @doc The socket closed or failed in `State'.
-spec socket_gone(atom(), term(), #d{}) -> gen_statem:event_handler_result(atom()).
socket_gone(established, Why, D) -> lost(D, Why);
socket_gone(await_hello, _, D) -> {stop, normal, D};
socket_gone(await_response, _, D) -> {stop, normal, D};
socket_gone(_, _, D) -> {keep_state, drop_socket(D)}.

%% Detached sessions of a server, oldest first: beyond max_kept_sessions the oldest waiting
%% one expires (a client that reconnects and drops again without end cannot make a server
%% keep unbounded sessions).
keep_session(#d{ref = Ref, o = #{max_kept_sessions := Max}}) ->
    [gen_statem:cast(P, expire_session) || P <- fabric_peer_registry:keep_detached(Ref, self(), Max)],
    ok.

unkeep_session(#d{ref = Ref}) -> fabric_peer_registry:unkeep_detached(Ref, self()).

%%% --- handshake

%% The client is authenticated: a new session, a resumed one (this process hands the
%% socket to the session's owner and ends), or none.
session(#{features := Feats} = Params, Resume, F3, #d{o = O, ref = Ref, hs = Hs} = D) ->
    %% the node name first (16.1): a refusal creates, resumes and ends no session
    Owner0 = case lists:member(<<"session">>, Feats) andalso is_binary(Resume) andalso
                 owner(Ref, O, Resume) of
                 Pid0 when is_pid(Pid0) -> Pid0;
                 _ -> self()
             end,
    case fabric_peer_route_conn:claim(Params, Owner0, D) of
        ok -> session(Feats, Params, Resume, F3, Owner0, D);
        node_in_use ->
            ?LOG_WARNING(#{what => node_in_use, peer => D#d.peer, node => maps:get(peer_node, Params),
                           then => refuse}, ?FABRIC_LOG),
            _ = raw_send(fabric_peer_server_hs:refused(F3, Hs, O), D),
            {stop, normal, drop_socket(D)}
    end.

session(Feats, Params, Resume, F3, Owner0, #d{o = O, ref = Ref, hs = Hs} = D) ->
    SessionOn = lists:member(<<"session">>, Feats),
    Claimed = case {SessionOn, Resume} of
                  {true, Sid} when is_binary(Sid) ->
                      claim(Ref, O, Sid, Feats, maps:get(peer_received, Params, undefined));
                  _ -> {error, none}
              end,
    {SidBin, Owner} = case {SessionOn, Claimed} of
                          {true, {ok, Pid, _}} -> {Resume, Pid};
                          {true, {error, _}} -> {crypto:strong_rand_bytes(16), none};
                          {false, _} -> {undefined, none}
                      end,
    Resumed = Owner =/= none,
    _ = [fabric_peer_route_conn:move(Params, Owner0, D) || not Resumed, Owner0 =/= self()],
    %% the Info keys of acks go only to a client that agreed on it (11.1)
    Extra = case {fabric_peer_acks:agreed(Feats), Claimed} of
                {true, {ok, _, N}} when is_integer(N) -> #{received => N};
                {true, {error, not_resumable}} -> #{resume_refused => <<"not_resumable">>};
                {true, {error, unknown_session}} -> #{resume_refused => <<"unknown_session">>};
                _ -> #{}
            end,
    F4 = fabric_peer_server_hs:success(SidBin, {Resumed, Extra}, F3, Hs, O),
    case raw_send(F4, D) of
        {{error, _}, D1} -> {stop, normal, D1};
        {ok, #d{t = T, sock = S, peer = Peer} = D1} when Resumed, node(Owner) =:= node() ->
            case fabric_peer_transport:controlling_process(T, S, Owner) of
                ok -> gen_statem:cast(Owner, {attach, T, S, Peer, Params});
                {error, _} -> fabric_peer_transport:close(T, S)
            end,
            {stop, normal, D1#d{sock = undefined}};
        {ok, #d{t = T, sock = S, peer = Peer} = D1} when Resumed ->
            %% the session lives at another server of the cluster (docs/cluster.md 6)
            ?LOG_INFO(#{what => session_relayed, peer => Peer, owner => node(Owner)}, ?FABRIC_LOG),
            _ = fabric_peer_cluster_relay:start(T, S, Owner, Peer, Params, D1#d.o),
            {stop, normal, D1#d{sock = undefined}};
        {ok, D1} ->
            ok = fabric_peer_route_conn:up(D1),
            fabric_peer_conn:established(Params#{session => SidBin}, false, D1)
    end.

%% The owner of session `Sid': a connection of this server, or of another server of its
%% cluster.
owner(Ref, O, Sid) ->
    case fabric_peer_registry:session_owner(Ref, Sid) of
        undefined -> fabric_peer_cluster:session_owner(O, Sid);
        Pid -> Pid
    end.

claim(Ref, O, Sid, Feats, PeerCount) ->
    case owner(Ref, O, Sid) of
        undefined -> {error, unknown_session};
        Pid ->
            try gen_statem:call(Pid, {claim, self(), Feats, PeerCount}, 5000) of
                {ok, Received} -> {ok, Pid, Received};
                {error, not_resumable} -> {error, not_resumable};
                _ -> {error, unknown_session}
            catch exit:_ -> {error, unknown_session}
            end
    end.

auth_failed(#d{ref = Ref, peer_ip = Ip, o = O} = D) ->
    {_, D1} = raw_send(fabric_peer_server_hs:failure(), D),
    case Ip =/= undefined andalso fabric_peer_throttle:failed(Ref, Ip, O) of
        block ->
            ?LOG_WARNING(#{what => address_blocked, peer => inet:ntoa(Ip),
                           unit => fabric_peer_throttle:unit_text(Ip),
                           failures => maps:get(max_auth_failures, O),
                           window_ms => maps:get(auth_failure_window, O),
                           blocked_ms => maps:get(auth_block_time, O),
                           text => "too many failed authentications: new connections from "
                                   "this address are refused for blocked_ms"}, ?FABRIC_LOG);
        _ -> ok
    end,
    {stop, normal, D1}.

hs_send(Frame, Next, D) ->
    case raw_send(Frame, D) of
        {ok, D1} -> {next_state, Next, D1};
        {{error, _}, D1} -> {stop, normal, D1}
    end.
