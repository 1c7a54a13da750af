%% @doc The client side of one connection: a `gen_statem' that connects, runs the client
%% handshake (legacy MD5 or extended HMAC, docs/protocol.md 2-3) and then serves the
%% established connection (`fabric_peer_conn:handle_common/4').
%%
%% States: `connecting', `await_challenge', `await_auth', `established' and
%% `disconnected' (waiting the backoff delay of `fabric_peer_backoff' before the next
%% attempt). With the `session' feature it asks the server to resume its session on
%% reconnect, and the proxies keep their identity; the first attempt's failure is returned
%% to `fabric_peer:connect/4'.
-module(fabric_peer_client).
-behaviour(gen_statem).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_conn.hrl").

-export([start_link/2, lost/2, socket_gone/3]).
%% lost/2 and socket_gone/3: called by fabric_peer_conn through the role module of the
%% connection
-ignore_xref([lost/2, socket_gone/3]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3, code_change/4]).

-import(fabric_peer_conn, [raw_send/2, drop_socket/1]).

%% @doc Start a client connection to `{Host, Port}' (the first attempt starts when
%% `fabric_peer_conn:await_ready/2' waits for it).
-spec start_link(map(), {term(), inet:port_number()}) -> {ok, pid()} | {error, term()}.
start_link(Ctx, Target) -> gen_statem:start_link(?MODULE, {Ctx, Target}, []).

%% @private
-spec callback_mode() -> gen_statem:callback_mode_result().
callback_mode() -> handle_event_function.

%% @private
-spec init({map(), {term(), inet:port_number()}}) -> gen_statem:init_result(atom()).
init({O, Target}) ->
    process_flag(trap_exit, true),
    logger:update_process_metadata(?FABRIC_LOG),
    %% the first attempt starts when connect/4 waits for it (await_ready), so its result
    %% always has someone to go to
    D = (fabric_peer_conn:new_data(client, watch_owner(O)))#d{target = Target},
    {ok, connecting, D#d{o = (D#d.o)#{ring => ring(D)}}}.

%% The owner (the caller of fabric_peer:connect/4 or connect_link/4) is monitored unless
%% `close_with_owner => false'; its 'DOWN' closes the connection (handle_event/4).
watch_owner(#{close_with_owner := true, owner := Owner} = O) ->
    O#{owner_monitor => erlang:monitor(process, Owner)};
watch_owner(O) -> O.

%% @private
-spec handle_event(gen_statem:event_type(), term(), atom(), #d{}) ->
          gen_statem:event_handler_result(atom()).

handle_event(internal, connect, connecting, #d{o = O, t = T, target = {Host, Port}} = D) ->
    case fabric_peer_transport:connect(T, Host, Port, maps:get(max_handshake_frame, O),
                                       maps:get(connect_timeout, O)) of
        {ok, S} ->
            D1 = D#d{sock = S, peer = fabric_peer_transport:peername(T, S), hs = #{}},
            {F1, Hs} = fabric_peer_client_hs:hello(O, crypto:strong_rand_bytes(32)),
            case raw_send(F1, D1) of
                {ok, D2} ->
                    ok = fabric_peer_conn:activate(D2),
                    {next_state, await_challenge, D2#d{hs = Hs},
                     [{{timeout, handshake}, maps:get(handshake_timeout, O), handshake}]};
                {{error, Why}, D2} ->
                    failed({connect, fabric_peer_transport:explain(T, await_challenge, Why)}, D2)
            end;
        {error, Why} ->
            failed({connect, fabric_peer_transport:explain(T, connecting, Why)}, D)
    end;

handle_event(internal, {frame, F2}, await_challenge, D0) ->
    #d{o = O, hs = Hs, session = Sid0, peer = Peer, p = P} = D = fabric_peer_conn:count_in(D0),
    Sid = case fabric_peer_protocol:received(P) of
              N when is_integer(N), Sid0 =/= undefined -> {Sid0, N};
              _ -> Sid0
          end,
    case fabric_peer_client_hs:challenge(F2, Hs, Sid, O, Peer) of
        {send, F3, Hs1} ->
            case raw_send(F3, D) of
                {ok, D1} -> {next_state, await_auth, D1#d{hs = Hs1}};
                {{error, Why}, D1} -> failed({connect, Why}, D1)
            end;
        {fail, {auth_failed, bad_challenge}} ->
            %% what answered the hello is neither a challenge nor a term: no fabric server
            failed({connect, {not_fabric, <<"this is not a fabric server (its first frame is "
                                            "not a fabric challenge)">>}}, D);
        {fail, Why} -> failed(Why, D)
    end;

handle_event(internal, {frame, F4}, await_auth, D0) ->
    #d{o = O, hs = Hs, peer = Peer} = D1 = fabric_peer_conn:count_in(D0),
    Result = fabric_peer_client_hs:auth(F4, Hs, O, Peer),
    D = case Result of
            {established, Params0, _} ->
                %% the server of this connection starts the next reconnection round
                O1 = fabric_peer_route_conn:own_heartbeat(Params0, O),
                D1#d{o = O1#{home => D1#d.target, round_tried => 0}};
            _ -> D1
        end,
    case Result of
        {established, Params, true} ->
            case fabric_peer_protocol:resume_ok(Params, D#d.p) of
                true -> fabric_peer_conn:established(Params, true, D);
                false -> not_resumable(Params, D)
            end;
        {established, Params, Resumed} -> fabric_peer_conn:established(Params, Resumed, D);
        {fail, Why} -> failed(Why, D)
    end;

handle_event(state_timeout, reconnect, disconnected, D) ->
    {next_state, connecting, D, [{next_event, internal, connect}]};

handle_event({timeout, handshake}, handshake, State, D)
  when State =:= await_challenge; State =:= await_auth ->
    failed(handshake_timeout, D);
handle_event({timeout, handshake}, _, _, _) -> keep_state_and_data;

handle_event({timeout, session}, expire, State, #d{p = P} = D) when State =/= established ->
    %% the server dropped the session by now: our proxies stand for nothing any more
    {Acts, P1} = fabric_peer_protocol:reset(P),
    {_, D1} = fabric_peer_conn:run(Acts, D#d{p = P1, session = undefined}),
    {keep_state, D1};
handle_event({timeout, session}, expire, _, _) -> keep_state_and_data;

handle_event({call, From}, await_ready, connecting, D)
  when not D#d.ever_connected, D#d.waiters =:= [] ->
    {keep_state, D#d{waiters = [From]}, [{next_event, internal, connect}]};

handle_event(info, {'DOWN', MRef, process, Owner, Why}, _, #d{o = #{owner_monitor := MRef}} = D) ->
    ?LOG_INFO(#{what => owner_down, owner => Owner, reason => Why, peer => D#d.peer,
                text => "the connection's owner exited: the connection closes"},
              ?FABRIC_LOG),
    {stop, normal, D};

handle_event(Type, Event, State, D) ->
    fabric_peer_conn:handle_common(Type, Event, State, D).

%% @private
-spec terminate(term(), atom(), #d{}) -> ok.
terminate(_Reason, _State, #d{ref = Ref} = D) ->
    _ = fabric_peer_conn:terminate(D),
    fabric_peer_registry:forget(Ref).

%% @private
-spec code_change(term(), atom(), #d{}, term()) -> {ok, atom(), #d{}}.
code_change(_, State, D, _) -> {ok, State, D}.

%%% --- losing the socket

%% @doc The socket of the established connection is gone: reconnect (keeping the session's
%% tables when there is one).
-spec lost(#d{}, term()) -> gen_statem:event_handler_result(atom()).
lost(D0, Why) ->
    D = fabric_peer_conn:lost(D0),
    Session = D#d.session =/= undefined,
    D1 = case Session of
             true -> D;
             false ->
                 {Acts, P} = fabric_peer_protocol:reset(D#d.p),
                 {_, Dr} = fabric_peer_conn:run(Acts, D#d{p = P}),
                 Dr
         end,
    ?LOG_INFO(#{what => connection_lost, peer => D1#d.peer, reason => Why, then => reconnect},
              ?FABRIC_LOG),
    retry(Session, D1).

retry(Session, #d{o = O} = D) ->
    case maps:get(reconnect, O) of
        false -> {stop, normal, D};
        true ->
            Delay = fabric_peer_backoff:delay(0, maps:get(reconnect_min, O), maps:get(reconnect_max, O)),
            SessionTimer = case Session of
                               true -> [{{timeout, session}, maps:get(session_timeout, O), expire}];
                               false -> []
                           end,
            {next_state, disconnected, D#d{attempt = 1},
             [{state_timeout, Delay, reconnect}, {{timeout, heartbeat}, cancel} | SessionTimer]}
    end.

%% The server resumed our session with a count out of range (docs/protocol.md 11.6): tell
%% it, close, end the session (reported) and reconnect without resuming.
not_resumable(Params, #d{p = P} = D) ->
    ?LOG_WARNING(#{what => session_not_resumable, peer => D#d.peer,
                   text => "the server resumed the session with a count out of range: "
                           "the session ends"}, ?FABRIC_LOG),
    _ = case lists:member(<<"error">>, maps:get(features, Params, [])) of
            true -> raw_send(fabric_peer_frame:encode_plain(
                               {error, <<"not_resumable">>,
                                <<"received count out of range">>}), D);
            false -> ok
        end,
    {Acts, P1} = fabric_peer_protocol:reset(not_resumable, P),
    {_, D1} = fabric_peer_conn:run(Acts, drop_socket(D#d{p = P1, session = undefined})),
    retry(false, D1).

%% @doc The socket closed or failed in `State'.
-spec socket_gone(atom(), term(), #d{}) -> gen_statem:event_handler_result(atom()).
socket_gone(established, Why, D) -> lost(D, Why);
socket_gone(State, Why, D) when State =:= await_challenge; State =:= await_auth ->
    failed({connect, fabric_peer_transport:explain(D#d.t, State, Why)}, D);
socket_gone(_, _, D) -> {keep_state, drop_socket(D)}.

%% A handshake or connect failure: the first attempt reports to `connect/4' and stops;
%% later attempts back off and retry.
failed(Why, #d{ever_connected = false, attempt = N} = D) ->
    case fallback(Why) andalso N + 1 < length(ring(D)) of
        true ->
            %% the first attempt tries every address once, in order (docs/cluster.md 6)
            Next = next_target(D),
            ?LOG_INFO(#{what => connect_failed, target => D#d.target, reason => Why,
                        then => Next}, ?FABRIC_LOG),
            {next_state, connecting, drop_socket(D#d{attempt = N + 1, target = Next}),
             [{next_event, internal, connect}, {{timeout, handshake}, cancel}]};
        false ->
            [gen_statem:reply(W, {error, Why}) || W <- D#d.waiters],
            {stop, normal, drop_socket(D#d{waiters = []})}
    end;
failed({auth_failed, _} = Why, D) ->
    %% The server refused us, or could not prove it knows the secret, or is an original
    %% peer we may not use: retrying cannot help (and would hammer the server). Stop; the
    %% proxies end with `noconnection' (terminate/3).
    ?LOG_ERROR(#{what => reconnect_auth_failed, peer => D#d.peer, reason => Why,
                 text => "authentication failed on reconnect: giving up; the connection's "
                         "proxies end with noconnection"}, ?FABRIC_LOG),
    {stop, normal, drop_socket(D)};
failed(Why, #d{o = O, attempt = N} = D) ->
    D1 = drop_socket(D),
    case maps:get(reconnect, O) of
        false -> {stop, normal, D1};
        true ->
            Tried = maps:get(round_tried, O, 0) + 1,
            case fallback(Why) andalso Tried < length(ring(D)) of
                true ->
                    %% one round per attempt: the next address at once (fallbacks)
                    Next = next_target(D),
                    ?LOG_INFO(#{what => connect_failed, target => D#d.target, reason => Why,
                                then => Next}, ?FABRIC_LOG),
                    {next_state, connecting, D1#d{target = Next, o = O#{round_tried => Tried}},
                     [{next_event, internal, connect}, {{timeout, handshake}, cancel}]};
                false ->
                    %% the round failed: back off, then start again from the server of the
                    %% last connection
                    Delay = fabric_peer_backoff:delay(N, maps:get(reconnect_min, O),
                                                      maps:get(reconnect_max, O)),
                    Home = maps:get(home, O, D#d.target),
                    ?LOG_INFO(#{what => connect_failed, target => D#d.target, reason => Why,
                                retry_in_ms => Delay, next => Home}, ?FABRIC_LOG),
                    {next_state, disconnected,
                     D1#d{attempt = N + 1, target = Home, o = O#{round_tried => 0}},
                     [{state_timeout, Delay, reconnect}, {{timeout, handshake}, cancel}]}
            end
    end.

%%% fallbacks (docs/cluster.md section 6)

%% The addresses of the client, in order: the one given to connect, then `fallbacks'.
ring(#d{o = O, target = T}) ->
    case maps:get(ring, O, undefined) of
        undefined -> [T | [{host(H), P} || {H, P} <- maps:get(fallbacks, O, [])]];
        Ring -> Ring
    end.

host(H) when is_binary(H) -> binary_to_list(H);
host(H) -> H.

%% The address after the current one (the ring is fixed at start: `init/1').
next_target(#d{target = T} = D) ->
    Ring = ring(D),
    case lists:dropwhile(fun(X) -> X =/= T end, Ring) of
        [T, Next | _] -> Next;
        _ -> hd(Ring)
    end.

%% A failure that another address may not have (not an authentication refusal, nor a
%% node name in use, which are final: docs/cluster.md section 6).
fallback({connect, _}) -> true;
fallback(handshake_timeout) -> true;
fallback(_) -> false.
