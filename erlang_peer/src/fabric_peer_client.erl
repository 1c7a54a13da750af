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
-include("fabric_peer_conn.hrl").

-export([start_link/2, lost/2, socket_gone/3]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3, code_change/4]).

-import(fabric_peer_conn, [raw_send/2, drop_socket/1, hs_decode/2]).

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
    %% the first attempt starts when connect/4 waits for it (await_ready), so its result
    %% always has someone to go to
    {ok, connecting, (fabric_peer_conn:new_data(client, O))#d{target = Target}}.

%% @private
-spec handle_event(gen_statem:event_type(), term(), atom(), #d{}) ->
          gen_statem:event_handler_result(atom()).

handle_event(internal, connect, connecting, #d{o = O, t = T, target = {Host, Port}} = D) ->
    case fabric_peer_transport:connect(T, Host, Port, maps:get(max_handshake_frame, O),
                                       maps:get(connect_timeout, O)) of
        {ok, S} ->
            D1 = D#d{sock = S, peer = fabric_peer_transport:peername(T, S), hs = #{}},
            {Hello, Hs} = case maps:get(mode, O) of
                              extended ->
                                  Nonce = crypto:strong_rand_bytes(32),
                                  {fabric_peer_handshake:extended_hello(Nonce), #{kind => extended}};
                              legacy ->
                                  {fabric_peer_handshake:legacy_hello(), #{kind => legacy}}
                          end,
            F1 = fabric_peer_handshake:encode(Hello),
            case raw_send(F1, D1) of
                {ok, D2} ->
                    ok = fabric_peer_conn:activate(D2),
                    {next_state, await_challenge, D2#d{hs = Hs#{f1 => F1}},
                     [{{timeout, handshake}, maps:get(handshake_timeout, O), handshake}]};
                {{error, Why}, D2} -> failed({connect, Why}, D2)
            end;
        {error, Why} ->
            failed({connect, Why}, D)
    end;

handle_event(internal, {frame, Bin}, await_challenge, D) ->
    D1 = fabric_peer_conn:count_in(D),
    case hs_decode(Bin, D1) of
        {ok, Term} -> challenge(Term, Bin, D1);
        error -> failed({auth_failed, bad_challenge}, D1)
    end;

handle_event(internal, {frame, Bin}, await_auth, D) ->
    D1 = fabric_peer_conn:count_in(D),
    case hs_decode(Bin, D1) of
        {ok, Term} -> auth(Term, D1);
        error -> failed({auth_failed, bad_auth_frame}, D1)
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
    ?LOG_INFO("fabric: connection to ~s lost (~0p); reconnecting", [D1#d.peer, Why]),
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

%% @doc The socket closed or failed in `State'.
-spec socket_gone(atom(), term(), #d{}) -> gen_statem:event_handler_result(atom()).
socket_gone(established, Why, D) -> lost(D, Why);
socket_gone(State, Why, D) when State =:= await_challenge; State =:= await_auth ->
    failed({connect, Why}, D);
socket_gone(_, _, D) -> {keep_state, drop_socket(D)}.

%%% --- handshake

challenge({challenge, C}, _, #d{o = O, hs = Hs} = D) ->
    case {maps:get(allow_legacy_auth, O), fabric_peer_handshake:parse_legacy_challenge(C)} of
        {false, _} ->
            ?LOG_ERROR("fabric: the server at ~s is an original (MD5-only) fabric peer and "
                       "legacy authentication is disabled; pass allow_legacy_auth => true "
                       "to allow MD5 authentication", [D#d.peer]),
            failed({auth_failed, legacy_server}, D);
        {true, {ok, Ch}} ->
            R = fabric_peer_handshake:legacy_response(Ch, maps:get(secret, O)),
            case raw_send(fabric_peer_handshake:encode({response, R}), D) of
                {ok, D1} -> {next_state, await_auth, D1#d{hs = Hs#{kind => legacy}}};
                {{error, Why}, D1} -> failed({connect, Why}, D1)
            end;
        {true, error} -> failed({auth_failed, bad_challenge}, D)
    end;
challenge({challenge, Nonce, Offer0}, F2, #d{o = O, hs = #{kind := extended, f1 := F1} = Hs} = D)
  when is_binary(Nonce), byte_size(Nonce) =:= 32 ->
    case fabric_peer_handshake:parse_offer(Offer0) of
        {ok, Offer} ->
            Mine = maps:get(features, O),
            Feats = [F || F <- Mine, lists:member(F, maps:get(features, Offer))],
            Resume = case lists:member(<<"session">>, Feats) of
                         true -> D#d.session;
                         false -> undefined
                     end,
            Accept = fabric_peer_handshake:accept(#{features => Feats, node => maps:get(node, O),
                                                    max_frame => maps:get(max_frame, O),
                                                    heartbeat => maps:get(heartbeat, O),
                                                    resume => Resume}),
            AcceptBin = term_to_binary(Accept),
            Mac = fabric_peer_handshake:client_mac(maps:get(secret, O), F1, F2, AcceptBin),
            F3 = fabric_peer_handshake:encode({response, Mac, AcceptBin}),
            case raw_send(F3, D) of
                {ok, D1} ->
                    {next_state, await_auth,
                     D1#d{hs = Hs#{f2 => F2, f3 => F3, offer => Offer, features => Feats}}};
                {{error, Why}, D1} -> failed({connect, Why}, D1)
            end;
        {error, _} -> failed({auth_failed, bad_offer}, D)
    end;
challenge(_, _, D) ->
    failed({auth_failed, bad_challenge}, D).

auth({auth, success}, #d{hs = #{kind := legacy}} = D) ->
    fabric_peer_conn:established(#{mode => legacy}, false, D);
auth({auth, success, Mac, InfoBin}, #d{o = O, hs = #{kind := extended} = Hs} = D)
  when is_binary(InfoBin) ->
    #{f1 := F1, f2 := F2, f3 := F3, offer := Offer, features := Feats} = Hs,
    Expected = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    case fabric_peer_handshake:check_mac(Expected, Mac) of
        false ->
            ?LOG_ERROR("fabric: the server at ~s could not prove it knows the secret", [D#d.peer]),
            failed({auth_failed, server_not_authenticated}, D);
        true ->
            case hs_decode(InfoBin, D) of
                {ok, I} ->
                    case fabric_peer_handshake:parse_info(I) of
                        {ok, #{session := Sid, resumed := Resumed}} ->
                            Params = #{mode => extended, features => Feats,
                                       version => maps:get(version, Offer),
                                       peer_node => maps:get(node, Offer),
                                       peer_max => maps:get(max_frame, Offer),
                                       peer_hb => maps:get(heartbeat, Offer), session => Sid},
                            fabric_peer_conn:established(Params, Resumed, D);
                        {error, _} -> failed({auth_failed, bad_info}, D)
                    end;
                error -> failed({auth_failed, bad_info}, D)
            end
    end;
auth({auth, failed}, D) ->
    failed({auth_failed, refused_by_server}, D);
auth(_, D) ->
    failed({auth_failed, bad_auth_frame}, D).

%% A handshake or connect failure: the first attempt reports to `connect/4' and stops;
%% later attempts back off and retry.
failed(Why, #d{ever_connected = false} = D) ->
    [gen_statem:reply(W, {error, Why}) || W <- D#d.waiters],
    {stop, normal, drop_socket(D#d{waiters = []})};
failed({auth_failed, _} = Why, D) ->
    %% The server refused us, or could not prove it knows the secret, or is an original
    %% peer we may not use: retrying cannot help (and would hammer the server). Stop; the
    %% proxies end with `noconnection' (terminate/3).
    ?LOG_ERROR("fabric: authentication with ~s failed on reconnect (~0p): giving up; "
               "the connection's proxies end with noconnection", [D#d.peer, Why]),
    {stop, normal, drop_socket(D)};
failed(Why, #d{o = O, attempt = N} = D) ->
    D1 = drop_socket(D),
    case maps:get(reconnect, O) of
        false -> {stop, normal, D1};
        true ->
            Delay = fabric_peer_backoff:delay(N, maps:get(reconnect_min, O), maps:get(reconnect_max, O)),
            ?LOG_INFO("fabric: connection to ~0p failed (~0p); retrying in ~b ms",
                      [D#d.target, Why, Delay]),
            {next_state, disconnected, D1#d{attempt = N + 1},
             [{state_timeout, Delay, reconnect}, {{timeout, handshake}, cancel}]}
    end.
