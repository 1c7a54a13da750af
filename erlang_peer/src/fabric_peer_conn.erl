%% @doc One fabric connection, server or client side: a `gen_statem' that owns the socket,
%% runs the handshake (legacy MD5 or extended HMAC, docs/protocol.md sections 2-3), and then
%% owns the connection's id tables: the local processes it exported (`{pr, Id}', monitored,
%% their death sent as DEAD) and the proxies standing for the peer's processes.
%%
%% With the `session' feature this process *is* the session: on the server it survives the
%% loss of its socket for `session_timeout' (state `detached') and a resuming client's new
%% connection hands its authenticated socket over to it; on the client it reconnects with
%% capped exponential backoff and asks to resume. Proxies keep their identity either way.
%%
%% Nothing received from the network can crash it: every frame is decoded with
%% `fabric_peer_etf:decode/2' and classified with `fabric_peer_frame:classify/3'; errors follow
%% the table of section 9 (drop and count, error frame to an extended peer, close on
%% `too_many_errors').
%%
%% Links: no tracing. A proxy traps exits and reports what it cannot leave to DEAD notices
%% (`exit/2' on it, the death of a local process linked to it with `link/1') as
%% `{fabric_proxy_exit, ...}', which becomes an `exit2' frame (README, "Links").
-module(fabric_peer_conn).
-behaviour(gen_statem).

-include_lib("kernel/include/logger.hrl").

-export([start_link/3, socket_ready/1, info/1, whereis/3, send/3, close/1, await_ready/2,
         allow/2, drop_connection/1]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3, code_change/4]).

-record(d, {
          role :: server | client,
          o :: map(),                          % settings (fabric_peer_opts)
          ref :: reference(),                  % registry key of the server / client
          t :: fabric_peer_transport:transport(),
          sock :: term(),
          buf = <<>> :: binary(),              % bytes received, not yet a whole frame
          peer = <<"unknown">> :: binary(),
          peer_ip :: inet:ip_address() | undefined,
          mode :: legacy | extended | undefined,
          feats = #{} :: #{binary() => true},
          version = 0 :: non_neg_integer(),
          peer_node = <<>> :: binary(),
          peer_max :: pos_integer(),
          peer_hb = 0 :: non_neg_integer(),
          session :: binary() | undefined,
          hs = #{} :: map(),
          %% exports: our processes known to the peer as {pr, Id}
          next_id = 1 :: pos_integer(),
          exp_pid = #{} :: #{pid() => pos_integer()},
          exp_id = #{} :: #{pos_integer() => pid()},
          exp_mon = #{} :: #{reference() => pos_integer()},
          %% Graves (docs/protocol.md 4.3, "Identity survives death"). Exported processes
          %% that ended: {pl, Id} still maps to the same pid, and the pid shipped again is
          %% still {pr, Id} (to an extended peer; see pid_id/2)
          grave = #{} :: #{pos_integer() => pid()},
          grave_pid = #{} :: #{pid() => {pos_integer(), term()}},
          grave_q = queue:new() :: queue:queue(),
          %% proxies that ended: shipping one back still gives {pl, Id}, and {pr, Id} from
          %% the peer is that same dead proxy
          pgrave = #{} :: #{pid() => integer()},
          pgrave_id = #{} :: #{integer() => pid()},
          pgrave_q = queue:new() :: queue:queue(),
          %% DEAD notices to repeat right after the frame being written (it names ended
          %% exports by their old ids; see pid_id/2)
          redead = [] :: [tuple()],
          %% DEAD notices recently written: resent after a resume, since the last ones may
          %% have been lost in flight (a duplicate DEAD is ignored by the receiver)
          recent_dead = queue:new() :: queue:queue(),
          %% proxies: the peer's processes, one local proxy per remote id
          token :: reference(),
          prox_id = #{} :: #{integer() => pid()},
          prox_pid = #{} :: #{pid() => integer()},
          prox_mon = #{} :: #{reference() => integer()},
          next_req = 1 :: pos_integer(),
          whereis_waiting = #{} :: #{pos_integer() => gen_statem:from()},
          %% gen calls from the peer whose alias tag we replaced (see gen_call_in/2)
          calls = #{} :: #{reference() => pid()},
          calls_q = queue:new() :: queue:queue(),
          stats = #{} :: map(),
          window :: fabric_peer_frame:window(),
          atoms_left = 0 :: non_neg_integer(),
          queue = queue:new() :: queue:queue(),
          queued_msgs = 0 :: non_neg_integer(),
          dead_pid :: pid() | undefined,
          signaller :: pid() | undefined,
          waiters = [] :: [gen_statem:from()],
          attempt = 0 :: non_neg_integer(),
          target :: {term(), inet:port_number()} | undefined,
          ever_connected = false :: boolean(),
          last_in = 0 :: integer(),
          last_out = 0 :: integer(),
          hb_n = 0 :: non_neg_integer()
         }).

-define(REG, fabric_peer_registry).
-define(PROXIES, fabric_peer_proxies).
%% A claimed session waits this long for the resuming connection to hand its socket over.
-define(ATTACH_TIMEOUT, 10000).
%% How many ended exported processes keep their id -> pid entry (identity of a pid the peer
%% sends back after its DEAD); older ones are replaced by an exited placeholder pid.
-define(GRAVE_SIZE, 1024).
-define(RECENT_DEAD, 256).
%% Pending gen calls from the peer remembered for their reply (a call never answered stays
%% until this many newer ones pushed it out).
-define(MAX_CALLS, 4096).

%%% API

%% @doc Start a connection. Server: `Arg' is an accepted socket (owned by the caller until
%% `socket_ready/1'). Client: `Arg' is `{Host, Port}'.
-spec start_link(server | client, map(), term()) -> {ok, pid()} | {error, term()}.
start_link(Role, Ctx, Arg) -> gen_statem:start_link(?MODULE, {Role, Ctx, Arg}, []).

%% @doc The acceptor made this process the socket's owner: start the handshake.
-spec socket_ready(pid()) -> ok.
socket_ready(Pid) -> gen_statem:cast(Pid, socket_ready).

%% @doc Statistics of this connection.
-spec info(pid()) -> map().
info(Pid) -> gen_statem:call(Pid, info).

%% @doc Ask the peer for a registered name (extension `whereis').
-spec whereis(pid(), atom() | binary() | string(), timeout()) -> pid() | undefined | {error, term()}.
whereis(Pid, Name, Timeout) -> gen_statem:call(Pid, {whereis, Name}, Timeout).

%% @doc Send `Msg' to `Dest': a proxy pid of this connection, a name, or `{Name, Node}'.
-spec send(pid(), pid() | atom() | {atom(), atom()}, term()) -> ok | {error, term()}.
send(Pid, Dest, Msg) -> gen_statem:call(Pid, {send, Dest, Msg}).

%% @doc Close the connection (proxies end with `noconnection').
-spec close(pid()) -> ok.
close(Pid) ->
    try gen_statem:stop(Pid, normal, 5000)
    catch exit:_ -> ok
    end.

%% @doc Client: wait until the first handshake completed (or failed).
-spec await_ready(pid(), timeout()) -> ok | {error, term()}.
await_ready(Pid, Timeout) -> gen_statem:call(Pid, await_ready, Timeout).

%% @doc Add names to the allowed set of this connection's policy.
-spec allow(pid(), [atom()]) -> ok.
allow(Pid, Names) -> gen_statem:call(Pid, {allow, Names}).

%% @doc Drop the socket as if the network failed (sessions, reconnection and tests).
-spec drop_connection(pid()) -> ok | {error, not_connected}.
drop_connection(Pid) -> gen_statem:call(Pid, drop_connection).

%%% gen_statem

%% @private
-spec callback_mode() -> gen_statem:callback_mode_result().
callback_mode() -> handle_event_function.

%% @private
-spec init({server | client, map(), term()}) -> gen_statem:init_result(atom()).
init({Role, #{ref := Ref} = O, Arg}) ->
    process_flag(trap_exit, true),
    T = transport(O),
    D0 = #d{role = Role, o = O, ref = Ref, t = T, token = make_ref(),
            peer_max = maps:get(max_frame, O),
            window = fabric_peer_frame:new_window(maps:get(max_errors, O),
                                                  maps:get(error_window, O)),
            atoms_left = maps:get(max_new_atoms, O),
            stats = #{frames_in => 0, frames_out => 0, errors => 0, connects => 0,
                      new_atoms => 0, local_errors => 0}},
    case Role of
        server -> {ok, wait_socket, D0#d{sock = Arg}};
        %% the first attempt starts when connect/4 waits for it (await_ready), so its
        %% result always has someone to go to
        client -> {ok, connecting, D0#d{target = Arg}}
    end.

transport(#{tls := false}) -> tcp;
transport(#{tls := Opts}) -> {tls, Opts}.

%% @private
-spec handle_event(gen_statem:event_type(), term(), atom(), #d{}) ->
          gen_statem:event_handler_result(atom()).

%%% --- server: socket hand-off and handshake

handle_event(cast, socket_ready, wait_socket, #d{t = T, sock = S0, o = O, ref = Ref} = D) ->
    HsTimeout = maps:get(handshake_timeout, O),
    Ip = case fabric_peer_transport:peer_ip(T, S0) of {ok, A} -> A; error -> undefined end,
    Blocked = case Ip of
                  undefined -> 0;
                  _ -> fabric_peer_throttle:blocked(Ref, Ip, O)
              end,
    case Blocked > 0 orelse fabric_peer_transport:handshake(T, S0, HsTimeout) of
        true ->
            ?LOG_WARNING("fabric: connection from ~s refused: too many failed authentications "
                         "(blocked for ~b ms more)", [inet:ntoa(Ip), Blocked]),
            fabric_peer_transport:close(T, S0),
            {stop, normal, D#d{sock = undefined}};
        {ok, S} ->
            D1 = D#d{sock = S, peer = fabric_peer_transport:peername(T, S), peer_ip = Ip},
            ok = activate(D1),
            {next_state, await_hello, D1, [{{timeout, handshake}, HsTimeout, handshake}]};
        {error, Why} ->
            ?LOG_INFO("fabric: transport handshake failed: ~0p", [Why]),
            {stop, normal, D}
    end;

handle_event(internal, {frame, Bin}, await_hello, D) ->
    bump(frames_in, D),
    case hs_decode(Bin, D) of
        {ok, Term} ->
            case fabric_peer_handshake:parse_hello(Term) of
                %% a legacy-only server answers like the original: the hello's name is ignored
                {extended, _, _} when map_get(mode, D#d.o) =:= legacy -> server_legacy_challenge(D);
                {extended, V, _ClientNonce} -> server_ext_challenge(Bin, V, D);
                legacy -> server_legacy_challenge(D);
                {error, bad_hello} -> hs_close("first frame is not a hello", D)
            end;
        error -> hs_close("first frame is not a valid term", D)
    end;

handle_event(internal, {frame, Bin}, await_response, D) ->
    D1 = bump(frames_in, D),
    Term = case hs_decode(Bin, D1) of {ok, T} -> T; error -> bad_frame end,
    server_response(Term, Bin, D1);

%%% --- client: connect and handshake

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
                ok ->
                    ok = activate(D1),
                    {next_state, await_challenge, D1#d{hs = Hs#{f1 => F1}},
                     [{{timeout, handshake}, maps:get(handshake_timeout, O), handshake}]};
                {error, Why} -> client_failed({connect, Why}, D1)
            end;
        {error, Why} ->
            client_failed({connect, Why}, D)
    end;

handle_event(internal, {frame, Bin}, await_challenge, D) ->
    D1 = bump(frames_in, D),
    case hs_decode(Bin, D1) of
        {ok, Term} -> client_challenge(Term, Bin, D1);
        error -> client_failed({auth_failed, bad_challenge}, D1)
    end;

handle_event(internal, {frame, Bin}, await_auth, D) ->
    D1 = bump(frames_in, D),
    case hs_decode(Bin, D1) of
        {ok, Term} -> client_auth(Term, D1);
        error -> client_failed({auth_failed, bad_auth_frame}, D1)
    end;

handle_event(state_timeout, reconnect, disconnected, D) ->
    {next_state, connecting, D, [{next_event, internal, connect}]};

handle_event({timeout, handshake}, handshake, State, #d{role = server} = D)
  when State =:= await_hello; State =:= await_response ->
    ?LOG_WARNING("fabric: handshake timeout from ~s", [D#d.peer]),
    case State of
        await_response -> _ = raw_send(fabric_peer_handshake:encode({auth, failed}), D);
        _ -> ok
    end,
    {stop, normal, D};
handle_event({timeout, handshake}, handshake, State, #d{role = client} = D)
  when State =:= await_challenge; State =:= await_auth ->
    client_failed(handshake_timeout, D);
handle_event({timeout, handshake}, _, _, _) -> keep_state_and_data;

%%% --- framing: bytes in, one frame at a time (the limit depends on the state)

handle_event(info, {Tag, S, Data}, _, #d{sock = S, buf = Buf} = D) when Tag =:= tcp; Tag =:= ssl ->
    {keep_state, D#d{buf = <<Buf/binary, Data/binary>>}, [{next_event, internal, parse}]};
handle_event(internal, parse, _, #d{sock = undefined}) ->
    keep_state_and_data;
handle_event(internal, parse, State, #d{o = O, buf = Buf} = D) ->
    Limit = case State of
                established -> maps:get(max_frame, O);
                _ -> maps:get(max_handshake_frame, O)
            end,
    case fabric_peer_frame:take(Buf, Limit) of
        {ok, Frame, Rest} ->
            {keep_state, D#d{buf = Rest},
             [{next_event, internal, {frame, Frame}}, {next_event, internal, parse}]};
        more ->
            ok = activate(D),
            keep_state_and_data;
        {error, {frame_too_large, Len}} ->
            too_large(State, Len, D)
    end;

%%% --- established: frames from the peer

handle_event(internal, {frame, Bin}, established, D) ->
    D1 = (bump(frames_in, D))#d{last_in = now_ms()},
    case established_frame(Bin, D1) of
        {ok, D2} -> {keep_state, D2};
        {close, D2} -> lost(D2, closed_by_us)
    end;

handle_event(info, {Tag, S}, State, #d{sock = S} = D) when Tag =:= tcp_closed; Tag =:= ssl_closed ->
    socket_gone(State, closed, D);
handle_event(info, {Tag, S, Why}, State, #d{sock = S} = D) when Tag =:= tcp_error; Tag =:= ssl_error ->
    socket_gone(State, Why, D);
handle_event(info, {fabric_send_failed, S, Why}, State, #d{sock = S} = D) ->
    socket_gone(State, Why, D);
handle_event(info, {Tag, _OldSock, _}, _, _) when Tag =:= tcp; Tag =:= ssl; Tag =:= tcp_error;
                                                  Tag =:= ssl_error; Tag =:= fabric_send_failed ->
    keep_state_and_data;
handle_event(info, {Tag, _OldSock}, _, _) when Tag =:= tcp_closed; Tag =:= ssl_closed ->
    keep_state_and_data;

%%% --- heartbeats

handle_event({timeout, heartbeat}, tick, established, D) ->
    heartbeat_tick(D);
handle_event({timeout, heartbeat}, tick, _, _) -> keep_state_and_data;

%%% --- sessions

handle_event(state_timeout, expire, State, D) when State =:= detached; State =:= resuming ->
    ?LOG_INFO("fabric: session of ~s expired", [D#d.peer]),
    {stop, normal, D};
handle_event(cast, expire_session, detached, D) ->
    ?LOG_INFO("fabric: session of ~s expired: more than max_kept_sessions are waiting", [D#d.peer]),
    {stop, normal, D};
handle_event({timeout, session}, expire, State, #d{role = client} = D) when State =/= established ->
    %% the server dropped the session by now: our proxies stand for nothing any more
    {keep_state, reset_tables(D)};
handle_event({timeout, session}, expire, _, _) -> keep_state_and_data;

handle_event({call, From}, {claim, _NewConn}, State, D)
  when State =:= established; State =:= detached; State =:= resuming ->
    unkeep_session(D),
    D1 = drop_socket(D),
    {next_state, resuming, D1, [{reply, From, ok}, {state_timeout, ?ATTACH_TIMEOUT, expire},
                                {{timeout, heartbeat}, cancel}]};
handle_event({call, From}, {claim, _}, _, _) ->
    {keep_state_and_data, [{reply, From, {error, not_resumable}}]};
handle_event(cast, {attach, T, S, Peer, Params}, resuming, D) ->
    D1 = D#d{t = T, sock = S, peer = Peer, buf = <<>>},
    ?LOG_INFO("fabric: session resumed by ~s", [Peer]),
    established(Params, true, D1);
handle_event(cast, {attach, T, S, _, _}, _, _) ->
    fabric_peer_transport:close(T, S),
    keep_state_and_data;

%%% --- local processes: proxies, exports, traces

handle_event(info, {fabric_proxy_msg, Proxy, Msg0}, _, D0) ->
    case maps:find(Proxy, D0#d.prox_pid) of
        {ok, Id} ->
            {Msg, D} = gen_reply_out(Proxy, Msg0, D0),
            case send_message(Id, Msg, D) of
                {ok, D1} -> {keep_state, D1};
                {{error, Why}, D1} ->
                    ?LOG_WARNING("fabric: message to a proxy of ~s not sent: ~0p", [D#d.peer, Why]),
                    {keep_state, bump(local_errors, D1)}
            end;
        error -> keep_state_and_data
    end;
handle_event(info, {fabric_proxy_exit, Proxy, From, Reason}, _, D) ->
    case {maps:find(Proxy, D#d.prox_pid), link_enabled(D)} of
        {{ok, B}, true} ->
            {A, D1} = pid_id(From, D),
            case rewrite_out(Reason, D1) of
                {ok, W, D2} -> {keep_state, flush_redead(emit(ctrl, {exit2, A, B, W}, D2))};
                {{error, Why}, D2} ->
                    ?LOG_WARNING("fabric: exit reason not sendable: ~0p", [Why]),
                    {keep_state, D2#d{redead = []}}
            end;
        _ -> keep_state_and_data
    end;
handle_event(info, {'DOWN', Ref, process, Pid, Reason}, _, D) ->
    {keep_state, down(Ref, Pid, Reason, D)};
handle_event(info, {'EXIT', _Pid, _Reason}, _, _) ->
    %% the signaller or the dead-pid placeholder: nothing to do
    keep_state_and_data;

%%% --- calls

handle_event({call, From}, await_ready, State, D) ->
    case State of
        established -> {keep_state_and_data, [{reply, From, ok}]};
        connecting when not D#d.ever_connected, D#d.waiters =:= [] ->
            {keep_state, D#d{waiters = [From]}, [{next_event, internal, connect}]};
        _ -> {keep_state, D#d{waiters = [From | D#d.waiters]}}
    end;
handle_event({call, From}, drop_connection, established, D) ->
    gen_statem:reply(From, ok),
    lost(D, dropped);
handle_event({call, From}, drop_connection, _, _) ->
    {keep_state_and_data, [{reply, From, {error, not_connected}}]};
handle_event({call, From}, info, State, D) ->
    {keep_state_and_data, [{reply, From, info_map(State, D)}]};
handle_event({call, From}, {allow, Names}, _, #d{ref = Ref, o = O} = D) ->
    Allowed = lists:usort(maps:get(allowed, O) ++ Names),
    O1 = O#{allowed => Allowed},
    true = ets:insert(?REG, {{Ref, policy}, policy(O1)}),
    {keep_state, D#d{o = O1}, [{reply, From, ok}]};
handle_event({call, From}, {whereis, Name}, State, D) ->
    case {State, D#d.mode, is_map_key(<<"whereis">>, D#d.feats), name_bin(Name)} of
        {_, _, _, error} -> {keep_state_and_data, [{reply, From, {error, badarg}}]};
        {established, extended, true, {ok, Bin}} ->
            Req = D#d.next_req,
            D1 = emit(ctrl, {whereis, Req, Bin}, D#d{next_req = Req + 1}),
            {keep_state, D1#d{whereis_waiting = (D1#d.whereis_waiting)#{Req => From}}};
        {established, _, _, _} -> {keep_state_and_data, [{reply, From, {error, not_supported}}]};
        _ -> {keep_state_and_data, [{reply, From, {error, not_connected}}]}
    end;
handle_event({call, From}, {send, Dest, Msg}, _, D) ->
    {Reply, D1} = send_to(Dest, Msg, D),
    {keep_state, D1, [{reply, From, Reply}]};
handle_event({call, From}, _, _, _) ->
    {keep_state_and_data, [{reply, From, {error, badarg}}]};
handle_event(_, _, _, _) ->
    keep_state_and_data.

%% @private
-spec terminate(term(), atom(), #d{}) -> ok.
terminate(_Reason, _State, D) ->
    unkeep_session(D),
    _ = kill_proxies(noconnection, D),
    reply_whereis_waiters({error, closed}, D),
    [gen_statem:reply(W, {error, closed}) || W <- D#d.waiters],
    case D#d.session of
        undefined -> ok;
        Sid -> ets:delete_object(?REG, {{D#d.ref, {session, Sid}}, self()})
    end,
    _ = drop_socket(D),
    case D#d.role of
        client -> ets:match_delete(?REG, {{D#d.ref, '_'}, '_'});
        server -> ok
    end,
    ok.

%% @private
-spec code_change(term(), atom(), #d{}, term()) -> {ok, atom(), #d{}}.
code_change(_, State, D, _) -> {ok, State, D}.

%%% ---------------------------------------------------------------- server handshake

server_legacy_challenge(D) ->
    C = fabric_peer_handshake:legacy_challenge(),
    hs_send({challenge, C}, await_response, D#d{hs = #{kind => legacy, challenge => C}}).

server_ext_challenge(F1, ClientVersion, #d{o = O} = D) ->
    Version = min(ClientVersion, fabric_peer_handshake:version()),
    Nonce = crypto:strong_rand_bytes(32),
    Offer = fabric_peer_handshake:offer(#{version => Version, features => maps:get(features, O),
                                          node => maps:get(node, O),
                                          max_frame => maps:get(max_frame, O),
                                          heartbeat => maps:get(heartbeat, O)}),
    F2 = fabric_peer_handshake:encode({challenge, Nonce, Offer}),
    case raw_send(F2, D) of
        ok ->
            {next_state, await_response,
             D#d{hs = #{kind => extended, f1 => F1, f2 => F2, version => Version}}};
        {error, _} -> {stop, normal, D}
    end.

server_response({response, R}, _, #d{hs = #{kind := legacy, challenge := C}, o = O} = D) ->
    case maps:get(allow_legacy_auth, O) of
        false ->
            ?LOG_WARNING("fabric: legacy client refused: MD5 authentication is disabled (~s)",
                         [D#d.peer]),
            auth_failed(D);
        true ->
            case fabric_peer_handshake:check_legacy_response(C, maps:get(secret, O), R) of
                true ->
                    case raw_send(fabric_peer_handshake:encode({auth, success}), D) of
                        ok -> established(#{mode => legacy}, false, D);
                        {error, _} -> {stop, normal, D}
                    end;
                false ->
                    ?LOG_WARNING("fabric: authentication failed (legacy) from ~s", [D#d.peer]),
                    auth_failed(D)
            end
    end;
server_response({response, Mac, AcceptBin}, F3,
                #d{hs = #{kind := extended, f1 := F1, f2 := F2} = Hs, o = O} = D)
  when is_binary(AcceptBin) ->
    Secret = maps:get(secret, O),
    Expected = fabric_peer_handshake:client_mac(Secret, F1, F2, AcceptBin),
    Accept = case fabric_peer_handshake:check_mac(Expected, Mac) of
                 true ->
                     case hs_decode(AcceptBin, D) of
                         {ok, A} -> fabric_peer_handshake:parse_accept(A, maps:get(features, O));
                         error -> {error, bad_accept}
                     end;
                 false -> {error, bad_mac}
             end,
    case Accept of
        {ok, #{features := Feats} = Acc} ->
            Params = #{mode => extended, features => Feats, version => maps:get(version, Hs),
                       peer_node => maps:get(node, Acc), peer_max => maps:get(max_frame, Acc),
                       peer_hb => maps:get(heartbeat, Acc)},
            server_session(Params, maps:get(resume, Acc), F1, F2, F3, D);
        {error, Why} ->
            ?LOG_WARNING("fabric: authentication failed (~0p) from ~s", [Why, D#d.peer]),
            auth_failed(D)
    end;
server_response(_, _, D) ->
    ?LOG_WARNING("fabric: bad handshake response from ~s", [D#d.peer]),
    auth_failed(D).

server_session(#{features := Feats} = Params, Resume, F1, F2, F3, #d{o = O, ref = Ref} = D) ->
    SessionOn = lists:member(<<"session">>, Feats),
    Claimed = case {SessionOn, Resume} of
                  {true, Sid} when is_binary(Sid) -> claim(Ref, Sid);
                  _ -> error
              end,
    {Sid1, Resumed} = case {SessionOn, Claimed} of
                          {true, {ok, Pid}} -> {{Resume, Pid}, true};
                          {true, error} -> {crypto:strong_rand_bytes(16), false};
                          {false, _} -> {undefined, false}
                      end,
    SidBin = case Sid1 of {B, _} -> B; B -> B end,
    InfoBin = term_to_binary(fabric_peer_handshake:info(#{session => SidBin, resumed => Resumed})),
    Mac = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    F4 = fabric_peer_handshake:encode({auth, success, Mac, InfoBin}),
    case raw_send(F4, D) of
        {error, _} -> {stop, normal, D};
        ok when Resumed ->
            {_, Owner} = Sid1,
            #d{t = T, sock = S, peer = Peer} = D,
            case fabric_peer_transport:controlling_process(T, S, Owner) of
                ok -> gen_statem:cast(Owner, {attach, T, S, Peer, Params});
                {error, _} -> fabric_peer_transport:close(T, S)
            end,
            {stop, normal, D#d{sock = undefined}};
        ok ->
            established(Params#{session => SidBin}, false, D)
    end.

%% Detached sessions of a server, oldest first in registry order: beyond max_kept_sessions
%% the oldest waiting one expires (a client that reconnects and drops again without end
%% cannot make a server keep unbounded sessions).
keep_session(#d{ref = Ref, o = #{max_kept_sessions := Max}}) ->
    true = ets:insert(?REG, {{Ref, {detached, self()}}, erlang:unique_integer([monotonic])}),
    Kept = lists:sort([{T, P} || [P, T] <- ets:match(?REG, {{Ref, {detached, '$1'}}, '$2'})]),
    Excess = length(Kept) - Max,
    [begin
         ets:delete(?REG, {Ref, {detached, P}}),
         gen_statem:cast(P, expire_session)
     end || {_, P} <- lists:sublist(Kept, max(0, Excess))],
    ok;
keep_session(_) -> ok.

unkeep_session(#d{role = server, ref = Ref}) ->
    ets:delete(?REG, {Ref, {detached, self()}}),
    ok;
unkeep_session(_) -> ok.

claim(Ref, Sid) ->
    case ets:lookup(?REG, {Ref, {session, Sid}}) of
        [{_, Pid}] ->
            try gen_statem:call(Pid, {claim, self()}, 5000) of
                ok -> {ok, Pid};
                _ -> error
            catch exit:_ -> error
            end;
        [] -> error
    end.

auth_failed(#d{ref = Ref, peer_ip = Ip, o = O} = D) ->
    _ = raw_send(fabric_peer_handshake:encode({auth, failed}), D),
    case Ip =/= undefined andalso fabric_peer_throttle:failed(Ref, Ip, O) of
        block ->
            ?LOG_WARNING("fabric: ~b failed authentications from ~s within ~b ms: refusing its "
                         "new connections for ~b ms",
                         [maps:get(max_auth_failures, O), inet:ntoa(Ip),
                          maps:get(auth_failure_window, O), maps:get(auth_block_time, O)]);
        _ -> ok
    end,
    {stop, normal, D}.

hs_send(Term, Next, D) ->
    case raw_send(fabric_peer_handshake:encode(Term), D) of
        ok -> {next_state, Next, D};
        {error, _} -> {stop, normal, D}
    end.

hs_close(Why, D) ->
    ?LOG_WARNING("fabric: handshake refused from ~s: ~s", [D#d.peer, Why]),
    {stop, normal, D}.

%% Handshake frames never create atoms.
hs_decode(Bin, #d{o = O}) ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0,
                                       max_decompressed => maps:get(max_handshake_frame, O)}) of
        {ok, T, _} -> {ok, T};
        {error, _} -> error
    end.

%%% ---------------------------------------------------------------- client handshake

client_challenge({challenge, C}, _, #d{o = O, hs = Hs} = D) ->
    case {maps:get(allow_legacy_auth, O), fabric_peer_handshake:parse_legacy_challenge(C)} of
        {false, _} ->
            ?LOG_ERROR("fabric: the server at ~s is an original (MD5-only) fabric peer and "
                       "legacy authentication is disabled; pass allow_legacy_auth => true "
                       "to allow MD5 authentication", [D#d.peer]),
            client_failed({auth_failed, legacy_server}, D);
        {true, {ok, Ch}} ->
            R = fabric_peer_handshake:legacy_response(Ch, maps:get(secret, O)),
            case raw_send(fabric_peer_handshake:encode({response, R}), D) of
                ok -> {next_state, await_auth, D#d{hs = Hs#{kind => legacy}}};
                {error, Why} -> client_failed({connect, Why}, D)
            end;
        {true, error} -> client_failed({auth_failed, bad_challenge}, D)
    end;
client_challenge({challenge, Nonce, Offer0}, F2, #d{o = O, hs = #{kind := extended, f1 := F1} = Hs} = D)
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
                ok ->
                    {next_state, await_auth,
                     D#d{hs = Hs#{f2 => F2, f3 => F3, offer => Offer, features => Feats}}};
                {error, Why} -> client_failed({connect, Why}, D)
            end;
        {error, _} -> client_failed({auth_failed, bad_offer}, D)
    end;
client_challenge(_, _, D) ->
    client_failed({auth_failed, bad_challenge}, D).

client_auth({auth, success}, #d{hs = #{kind := legacy}} = D) ->
    established(#{mode => legacy}, false, D);
client_auth({auth, success, Mac, InfoBin}, #d{o = O, hs = #{kind := extended} = Hs} = D)
  when is_binary(InfoBin) ->
    #{f1 := F1, f2 := F2, f3 := F3, offer := Offer, features := Feats} = Hs,
    Expected = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    case fabric_peer_handshake:check_mac(Expected, Mac) of
        false ->
            ?LOG_ERROR("fabric: the server at ~s could not prove it knows the secret", [D#d.peer]),
            client_failed({auth_failed, server_not_authenticated}, D);
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
                            established(Params, Resumed, D);
                        {error, _} -> client_failed({auth_failed, bad_info}, D)
                    end;
                error -> client_failed({auth_failed, bad_info}, D)
            end
    end;
client_auth({auth, failed}, D) ->
    client_failed({auth_failed, refused_by_server}, D);
client_auth(_, D) ->
    client_failed({auth_failed, bad_auth_frame}, D).

%% A client handshake or connect failure: the first attempt reports to `connect/4' and
%% stops; later attempts back off and retry.
client_failed(Why, #d{ever_connected = false} = D) ->
    [gen_statem:reply(W, {error, Why}) || W <- D#d.waiters],
    {stop, normal, drop_socket(D#d{waiters = []})};
client_failed({auth_failed, _} = Why, D) ->
    %% The server refused us, or could not prove it knows the secret, or is an original
    %% peer we may not use: retrying cannot help (and would hammer the server). Stop; the
    %% proxies end with `noconnection' (terminate/3).
    ?LOG_ERROR("fabric: authentication with ~s failed on reconnect (~0p): giving up; "
               "the connection's proxies end with noconnection", [D#d.peer, Why]),
    {stop, normal, drop_socket(D)};
client_failed(Why, #d{o = O, attempt = N} = D) ->
    D1 = drop_socket(D),
    case maps:get(reconnect, O) of
        false -> {stop, normal, D1};
        true ->
            Delay = backoff(N, maps:get(reconnect_min, O), maps:get(reconnect_max, O)),
            ?LOG_INFO("fabric: connection to ~0p failed (~0p); retrying in ~b ms",
                      [D#d.target, Why, Delay]),
            {next_state, disconnected, D1#d{attempt = N + 1},
             [{state_timeout, Delay, reconnect}, {{timeout, handshake}, cancel}]}
    end.

%% Capped exponential backoff with jitter: a uniform delay in [Cap/2, Cap].
backoff(N, Min, Max) ->
    Cap = min(Max, Min bsl min(N, 20)),
    Cap div 2 + rand:uniform(max(1, Cap - Cap div 2)).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

backoff_test() ->
    %% Doubles from Min, never exceeds Max, never drops below half its cap (jitter).
    [begin
         Cap = min(80, 20 bsl N),
         D = backoff(N, 20, 80),
         true = D =< Cap andalso D >= Cap div 2 andalso D >= 1
     end || N <- lists:seq(0, 40), _ <- lists:seq(1, 20)],
    ok.
-endif.

%%% ---------------------------------------------------------------- established

established(Params, Resumed, #d{o = O} = D0) ->
    Mode = maps:get(mode, Params),
    Feats = fabric_peer_rewrite:features(maps:get(features, Params, [])),
    D1 = D0#d{mode = Mode, feats = Feats, version = maps:get(version, Params, 0),
              peer_node = maps:get(peer_node, Params, <<>>),
              peer_max = maps:get(peer_max, Params, maps:get(max_frame, O)),
              peer_hb = maps:get(peer_hb, Params, 0),
              hs = #{}, attempt = 0, last_in = now_ms(), last_out = now_ms(),
              stats = maps:update_with(connects, fun(N) -> N + 1 end, D0#d.stats)},
    %% A client that was connected before and did not resume starts fresh.
    D2 = case {D0#d.ever_connected, Resumed} of
             {true, false} -> reset_tables(D1);
             _ -> D1
         end,
    D3 = register_session(maps:get(session, Params, D2#d.session), D2),
    D4 = flush_queue(Resumed, D3#d{ever_connected = true}),
    [gen_statem:reply(W, ok) || W <- D4#d.waiters],
    ?LOG_INFO("fabric: ~s connection established with ~s (~0p)",
              [Mode, D4#d.peer, maps:keys(Feats)]),
    {next_state, established, D4#d{waiters = []},
     [{{timeout, handshake}, cancel}, {{timeout, session}, cancel}, {next_event, internal, parse}
      | heartbeat_timer(D4)]}.

register_session(undefined, D) -> D#d{session = undefined};
register_session(Sid, #d{role = server, ref = Ref} = D) ->
    true = ets:insert(?REG, {{Ref, {session, Sid}}, self()}),
    D#d{session = Sid};
register_session(Sid, D) -> D#d{session = Sid}.

%% A length header over the limit: the stream cannot be resynchronised, so close
%% (after an error frame to an extended peer).
too_large(State, Len, D) ->
    ?LOG_WARNING("fabric: frame of ~b bytes over the limit from ~s: closing", [Len, D#d.peer]),
    D1 = count_error(D),
    _ = send_error_frame(frame_too_large,
                         iolist_to_binary(io_lib:format("frame length ~b over the limit", [Len])), D1),
    case State of
        established -> lost(D1, closed_by_us);
        _ -> socket_gone(State, frame_too_large, D1)
    end.

%% The socket is gone. With a session (server: detach; client: reconnect) the tables stay;
%% without one the proxies end with `noconnection'.
socket_gone(State, Why, D) when State =:= established ->
    lost(D, Why);
socket_gone(await_hello, _, D) -> {stop, normal, D};
socket_gone(await_response, _, D) -> {stop, normal, D};
socket_gone(State, Why, #d{role = client} = D) when State =:= await_challenge; State =:= await_auth ->
    client_failed({connect, Why}, D);
socket_gone(_, _, D) -> {keep_state, drop_socket(D)}.

lost(D0, Why) ->
    D = drop_socket(D0),
    reply_whereis_waiters({error, not_connected}, D),
    D1 = D#d{whereis_waiting = #{}},
    Session = D1#d.session =/= undefined,
    case {D1#d.role, Session, Why} of
        {server, true, W} when W =/= closed_by_us ->
            ?LOG_INFO("fabric: connection from ~s lost (~0p); keeping its session", [D1#d.peer, W]),
            keep_session(D1),
            {next_state, detached, D1,
             [{state_timeout, maps:get(session_timeout, D1#d.o), expire},
              {{timeout, heartbeat}, cancel}]};
        {server, _, _} ->
            {stop, normal, D1};
        {client, _, _} ->
            D2 = case Session of
                     true -> D1;
                     false -> reset_tables(D1)
                 end,
            ?LOG_INFO("fabric: connection to ~s lost (~0p); reconnecting", [D1#d.peer, Why]),
            client_retry(Session, D2)
    end.

client_retry(Session, #d{o = O} = D) ->
    case maps:get(reconnect, O) of
        false -> {stop, normal, D};
        true ->
            Delay = backoff(0, maps:get(reconnect_min, O), maps:get(reconnect_max, O)),
            SessionTimer = case Session of
                               true -> [{{timeout, session}, maps:get(session_timeout, O), expire}];
                               false -> []
                           end,
            {next_state, disconnected, D#d{attempt = 1},
             [{state_timeout, Delay, reconnect}, {{timeout, heartbeat}, cancel} | SessionTimer]}
    end.

%% One frame in the established state.
established_frame(Bin, #d{o = O, atoms_left = Left} = D) ->
    Budget = min(Left, server_atoms_left(D)),
    case fabric_peer_etf:decode(Bin, #{atoms_left => Budget,
                                       max_decompressed => maps:get(max_frame, O)}) of
        {ok, Term, New} ->
            D1 = spend_atoms(New, D),
            put('$fabric_fresh', []),
            Result = try dispatch(fabric_peer_frame:classify(Term, D1#d.mode, D1#d.feats), D1)
                     catch throw:{fabric_limit, Why} -> frame_error(limit, Why, D1)
                     end,
            {_, Dn} = Result,
            %% proxies started for this frame but in neither table after it (the frame was
            %% dropped half-way) stand for nothing: end them (a stand-in of an exit2 is
            %% buried, and ends by itself after delivering its signal)
            [discard_proxy(P) || P <- erase('$fabric_fresh'), not is_map_key(P, Dn#d.prox_pid),
                                 not is_map_key(P, Dn#d.pgrave)],
            Result;
        {error, {bad_term, Why}} -> frame_error(bad_term, Why, D);
        {error, {limit, Why}} -> frame_error(limit, Why, D)
    end.

dispatch({m, Dest, Payload}, D) -> incoming_message(Dest, Payload, D);
dispatch({dead, Id, Reason}, D) ->
    case maps:find(Id, D#d.prox_id) of
        {ok, Proxy} ->
            R = case {Reason, D#d.mode} of
                    {noproc, legacy} -> normal;
                    _ -> Reason
                end,
            {ok, end_proxy(Proxy, R, D)};
        error ->
            ?LOG_DEBUG("fabric: DEAD for unknown id ~b from ~s", [Id, D#d.peer]),
            {ok, D}
    end;
dispatch({r, Id}, D) when Id > 0 ->
    %% "create the proxy for the sender's process Id", even for an id that ended: the
    %% original does (vectors 36-39), and no peer of ours sends this frame
    {_, D1} = proxy_for(Id, D),
    {ok, D1};
dispatch({r, _}, D) -> frame_error(unknown_frame, bad_id, D);
dispatch({whereis, Req, NameBin}, D) ->
    {Result, D1} = whereis_local(NameBin, D),
    {ok, emit(ctrl, {whereis_reply, Req, Result}, D1)};
dispatch({whereis_reply, Req, Result}, D) ->
    case maps:take(Req, D#d.whereis_waiting) of
        {From, W} ->
            D1 = D#d{whereis_waiting = W},
            case Result of
                {pr, Id} when is_integer(Id), Id > 0 ->
                    try remote_pid(Id, D1) of
                        {Pid, D2} ->
                            gen_statem:reply(From, Pid),
                            {ok, D2}
                    catch throw:{fabric_limit, Why} ->
                            gen_statem:reply(From, {error, {limit, max_proxies}}),
                            frame_error(limit, Why, D1)
                    end;
                undefined ->
                    gen_statem:reply(From, undefined),
                    {ok, D1};
                _ ->
                    gen_statem:reply(From, {error, bad_reply}),
                    frame_error(bad_payload, bad_whereis_reply, D1)
            end;
        error -> {ok, D}
    end;
dispatch({link, A, B}, D) when A > 0 ->
    case {maps:find(B, D#d.exp_id), remote_ended(A, D)} of
        {{ok, BPid}, false} ->
            {Proxy, D1} = proxy_for(A, D),
            fabric_peer_proxy:control(Proxy, D1#d.token, {link, BPid}),
            {ok, D1};
        %% B ended (its DEAD is on its way), or A ended before its link frame was read: a
        %% link that cannot exist any more
        _ -> {ok, D}
    end;
dispatch({unlink, A, B}, D) ->
    case {maps:find(A, D#d.prox_id), maps:find(B, D#d.exp_id)} of
        {{ok, Proxy}, {ok, BPid}} ->
            fabric_peer_proxy:control(Proxy, D#d.token, {unlink, BPid}),
            {ok, D};
        _ -> {ok, D}
    end;
dispatch({exit2, A, B, Reason0}, D) when A > 0 ->
    case maps:find(B, D#d.exp_id) of
        {ok, BPid} ->
            case rewrite_in(Reason0, D) of
                {ok, Reason, D1} ->
                    Ended = remote_ended(A, D1),
                    {Proxy, D2} = proxy_for(A, D1),
                    fabric_peer_proxy:control(Proxy, D2#d.token, {exit, BPid, Reason}),
                    case Ended of
                        %% A's DEAD overtook its exit signal (both are sent independently):
                        %% deliver the signal from a stand-in that ends right after
                        true -> {ok, end_proxy(Proxy, noproc, D2)};
                        false -> {ok, D2}
                    end;
                {{error, {Code, Why}}, D1} -> frame_error(Code, Why, D1)
            end;
        error -> {ok, D}
    end;
dispatch({heartbeat, N}, D) -> {ok, emit(ctrl, {heartbeat_ack, N}, D)};
dispatch({heartbeat_ack, _}, D) -> {ok, D};
dispatch({error, Code, Msg}, D) ->
    ?LOG_WARNING("fabric: peer ~s reports error ~s: ~ts", [D#d.peer, Code, Msg]),
    {ok, D};
dispatch({error, unknown_frame}, D) -> frame_error(unknown_frame, unknown_frame_shape, D);
dispatch(_, D) -> frame_error(unknown_frame, bad_ids, D).

incoming_message(Dest, Payload, D) ->
    case resolve_dest(Dest, D) of
        {ok, Target} ->
            case rewrite_in(Payload, D) of
                {ok, Msg, D1} ->
                    {Msg1, D2} = gen_call_in(Msg, D1),
                    deliver(Target, Msg1),
                    {ok, D2};
                {{error, {Code, Why}}, D1} -> frame_error(Code, Why, D1)
            end;
        drop -> {ok, D};
        {error, Code, Why} -> frame_error(Code, Why, D)
    end.

resolve_dest(Id, D) when is_integer(Id) ->
    case maps:find(Id, D#d.exp_id) of
        {ok, Pid} -> {ok, Pid};
        error when Id > 0, Id < D#d.next_id ->
            %% issued, and the process ended since: the peer has not seen its DEAD yet
            drop;
        error -> {error, unknown_id, Id}
    end;
resolve_dest(Name, D) when is_atom(Name) -> resolve_name(Name, D);
resolve_dest({Name, Node}, #d{o = O} = D) ->
    case fabric_peer_policy:check_node(Node, maps:get(routable_nodes, O), maps:get(node, O)) of
        local -> resolve_name(Name, D);
        {remote, N} ->
            case check_name(Name, D) of
                ok -> {ok, {Name, N}};
                Err -> Err
            end;
        {error, not_allowed} ->
            refused(Name, D),
            {error, not_allowed, {Name, Node}}
    end.

resolve_name(Name, D) ->
    case check_name(Name, D) of
        ok ->
            case erlang:whereis(Name) of
                Pid when is_pid(Pid) -> {ok, Pid};
                _ ->
                    ?LOG_DEBUG("fabric: message to unregistered name ~0p dropped", [Name]),
                    drop
            end;
        Err -> Err
    end.

check_name(Name, D) ->
    case fabric_peer_policy:check(Name, policy_of(D)) of
        ok -> ok;
        {error, _} -> refused(Name, D), {error, not_allowed, Name}
    end.

refused(Name, D) ->
    ?LOG_WARNING("fabric: name ~0p refused by the name policy (peer ~s)", [Name, D#d.peer]).

%% gen_server/gen_statem calls from the peer (OTP 24+ callers). The caller's reply tag is
%% `[alias | Ref]' and `gen:reply/2' sends the reply to the alias `Ref' itself, which is a
%% reference of the peer's node: it would never cross the connection. So the call is
%% delivered with the plain tag `Ref' (the pre-alias form every gen behaviour still
%% accepts): the reply is then sent to the caller's proxy as `{Ref, Reply}', and
%% gen_reply_out/3 restores the tag the caller waits for. See README "gen_server:call".
gen_call_in({'$gen_call', {From, [alias | Ref]}, Req}, #d{calls = C, calls_q = Q} = D)
  when is_pid(From), is_reference(Ref), is_map_key(From, D#d.prox_pid) ->
    Q1 = queue:in(Ref, Q),
    {C1, Q2} = case queue:len(Q1) > ?MAX_CALLS of
                   true ->
                       {{value, Old}, Q3} = queue:out(Q1),
                       {maps:remove(Old, C), Q3};
                   false -> {C, Q1}
               end,
    {{'$gen_call', {From, Ref}, Req}, D#d{calls = C1#{Ref => From}, calls_q = Q2}};
gen_call_in(Msg, D) -> {Msg, D}.

gen_reply_out(Proxy, {Ref, Reply} = Msg, #d{calls = C} = D) when is_reference(Ref) ->
    case C of
        #{Ref := Proxy} ->
            %% the queue entry stays until pushed out; a stale one only costs a lookup
            {{[alias | Ref], Reply}, D#d{calls = maps:remove(Ref, C)}};
        _ -> {Msg, D}
    end;
gen_reply_out(_, Msg, D) -> {Msg, D}.

deliver(Pid, _) when Pid =:= self() -> ok;
deliver(Target, Msg) -> Target ! Msg, ok.

whereis_local(NameBin, D) ->
    Name = try binary_to_existing_atom(NameBin, utf8) catch error:_ -> undefined end,
    case Name =/= undefined andalso fabric_peer_policy:check(Name, policy_of(D)) of
        ok ->
            case erlang:whereis(Name) of
                Pid when is_pid(Pid), map_size(D#d.exp_pid) < map_get(max_exports, D#d.o) ->
                    {Id, D1} = export(Pid, D),
                    {{pr, Id}, D1};
                Pid when is_pid(Pid), is_map_key(Pid, D#d.exp_pid) ->
                    {{pr, map_get(Pid, D#d.exp_pid)}, D};
                Pid when is_pid(Pid) ->
                    ?LOG_WARNING("fabric: whereis(~0p) from ~s not answered: max_exports reached",
                                 [Name, D#d.peer]),
                    {undefined, D};
                _ -> {undefined, D}
            end;
        _ ->
            ?LOG_WARNING("fabric: whereis(~0p) refused or unknown (peer ~s)", [NameBin, D#d.peer]),
            {undefined, D}
    end.

%% Section 9: count, log, tell an extended peer, close after too many.
frame_error(Code, Why, D) ->
    ?LOG_WARNING("fabric: dropped a frame from ~s: ~s ~0P", [D#d.peer, Code, Why, 10]),
    D1 = count_error(D),
    _ = send_error_frame(Code, Why, D1),
    N = maps:get(frames_in, D1#d.stats),
    case fabric_peer_frame:note_error(N, D1#d.window) of
        {ok, W} -> {ok, D1#d{window = W}};
        {close, W} ->
            ?LOG_WARNING("fabric: too many errors from ~s: closing", [D#d.peer]),
            _ = send_error_frame(too_many_errors, <<"too many errors">>, D1),
            {close, D1#d{window = W}}
    end.

count_error(D) -> bump(errors, D).

send_error_frame(Code, Why, #d{mode = extended, feats = #{<<"error">> := true}} = D) ->
    raw_send(fabric_peer_frame:encode_plain(fabric_peer_frame:error_frame(Code, detail(Why))), D);
send_error_frame(_, _, _) -> ok.

detail(B) when is_binary(B) -> B;
detail(T) -> iolist_to_binary(io_lib:format("~0P", [T, 10])).

%%% ---------------------------------------------------------------- sending

send_to(Dest, Msg, D) when is_pid(Dest) ->
    case maps:find(Dest, D#d.prox_pid) of
        {ok, Id} -> send_message(Id, Msg, D);
        error -> {{error, not_a_proxy}, D}
    end;
send_to(Name, Msg, D) when is_atom(Name) -> send_message(Name, Msg, D);
send_to({Name, Node} = Dest, Msg, D) when is_atom(Name), is_atom(Node) -> send_message(Dest, Msg, D);
send_to(_, _, D) -> {{error, badarg}, D}.

send_message(Dest, Msg, D) ->
    case rewrite_out(Msg, D) of
        {ok, W, D1} ->
            case emit_checked(msg, {m, Dest, W}, D1) of
                {ok, D2} -> {ok, flush_redead(D2)};
                {E, D2} -> {E, D2#d{redead = []}}
            end;
        {{error, _} = E, D1} -> {E, D1#d{redead = []}}
    end.

flush_redead(#d{redead = []} = D) -> D;
flush_redead(#d{redead = Ds} = D) ->
    lists:foldl(fun(Dead, Acc) -> emit(ctrl, Dead, Acc) end, D#d{redead = []}, lists:reverse(Ds)).

%% Write a frame now, or queue it while there is no socket (control frames always; messages
%% up to `max_queue').
emit(Kind, Term, D) ->
    {_, D1} = emit_checked(Kind, Term, D),
    D1.

emit_checked(Kind, Term, D) ->
    Bin = case Kind of
              msg -> fabric_peer_frame:encode_message(Term);
              ctrl -> fabric_peer_frame:encode_plain(Term)
          end,
    case fabric_peer_frame:check_size(Bin, D#d.peer_max) of
        {error, _} = E -> {E, D};
        ok -> emit_bin(Kind, Bin, D)
    end.

emit_bin(Kind, Bin, #d{sock = S} = D) when S =/= undefined, D#d.mode =/= undefined ->
    case connected(D) of
        true ->
            case raw_send(Bin, D) of
                ok -> {ok, D#d{last_out = now_ms()}};
                {error, Why} ->
                    %% not written: keep it for a resumed session (dropped otherwise)
                    self() ! {fabric_send_failed, S, Why},
                    enqueue(Kind, Bin, D)
            end;
        false -> enqueue(Kind, Bin, D)
    end;
emit_bin(Kind, Bin, D) -> enqueue(Kind, Bin, D).

connected(#d{sock = undefined}) -> false;
connected(#d{hs = Hs}) -> map_size(Hs) =:= 0.

enqueue(msg, _, #d{queued_msgs = N, o = #{max_queue := Max}} = D) when N >= Max ->
    {{error, case Max of 0 -> not_connected; _ -> queue_full end}, D};
enqueue(Kind, Bin, #d{queue = Q, queued_msgs = N} = D) ->
    N1 = case Kind of msg -> N + 1; ctrl -> N end,
    {ok, D#d{queue = queue:in(Bin, Q), queued_msgs = N1}}.

flush_queue(true, #d{queue = Q, recent_dead = R} = D) ->
    Queued = queue:to_list(Q),
    Resend = [B || B <- [fabric_peer_frame:encode_plain(T) || T <- queue:to_list(R)],
                   not lists:member(B, Queued)],
    lists:foldl(fun(Bin, Acc) -> {_, Acc1} = emit_bin(ctrl, Bin, Acc), Acc1 end,
                D#d{queue = queue:new(), queued_msgs = 0}, Resend ++ Queued);
flush_queue(false, #d{queue = Q} = D) ->
    case queue:len(Q) of
        0 -> ok;
        N -> ?LOG_WARNING("fabric: ~b queued frames dropped: the session was not resumed", [N])
    end,
    D#d{queue = queue:new(), queued_msgs = 0}.

raw_send(Bin, #d{t = T, sock = S} = D) when S =/= undefined ->
    case fabric_peer_transport:send(T, S, Bin) of
        ok -> _ = bump(frames_out, D), put_stat(frames_out), ok;
        E -> E
    end;
raw_send(_, _) -> {error, closed}.

%%% ---------------------------------------------------------------- rewriting

rewrite_out(Term, D) ->
    case fabric_peer_rewrite:out(Term, D#d.feats, fun pid_out/2, D) of
        {ok, W, D1} -> {ok, W, D1};
        {error, Why} -> {{error, Why}, D}
    end.

pid_out(Pid, D) ->
    case maps:find(Pid, D#d.prox_pid) of
        {ok, Id} -> {{pl, Id}, D};
        error when is_map_key(Pid, D#d.pgrave) -> {{pl, maps:get(Pid, D#d.pgrave)}, D};
        error ->
            #d{exp_pid = EP, o = #{max_exports := Max}} = D,
            case is_map_key(Pid, EP) orelse map_size(EP) < Max of
                true ->
                    {Id, D1} = pid_id(Pid, D),
                    {{pr, Id}, D1};
                false ->
                    %% nothing is sent: fabric_peer_rewrite:out/4 returns the error
                    throw({rewrite, {limit, max_exports}})
            end
    end.

%% The id a local pid goes out with. An exported process that ended keeps its id (the peer
%% remembers its dead proxy: docs/protocol.md 4.3, "Identity survives death"). This is what
%% makes a process that sends `self()' through a proxy and ends at once reach the peer as
%% the proxy it already has: its DOWN comes to us directly while its message comes through
%% the proxy, so the DOWN is often handled first. The DEAD is repeated after the frame, for
%% a peer that has forgotten the id (it would otherwise create a live proxy); a peer that
%% remembers ignores a DEAD for a dead proxy. An original (legacy) peer has no graves: the
%% pid is exported again, as the original does.
pid_id(Pid, #d{mode = Mode, grave_pid = G} = D) ->
    case G of
        #{Pid := {Id, Reason}} when Mode =:= extended ->
            {Id, D#d{redead = [{'DEAD', {pr, Id}, Reason} | D#d.redead]}};
        _ -> export(Pid, D)
    end.

rewrite_in(Wire, D) ->
    case fabric_peer_rewrite:in(Wire, D#d.feats, fun resolve/3, D) of
        {ok, T, D1} -> {ok, T, D1};
        {error, {Code, Why}} when Code =:= bad_payload; Code =:= limit -> {{error, {Code, Why}}, D};
        {error, Other} -> {{error, {bad_payload, Other}}, D}
    end.

resolve(pr, Id, D) ->
    try remote_pid(Id, D) of
        {Pid, D1} -> {ok, Pid, D1}
    catch throw:{fabric_limit, Why} -> {error, {limit, Why}}
    end;
resolve(pl, Id, D) ->
    case maps:find(Id, D#d.exp_id) of
        {ok, Pid} -> {ok, Pid, D};
        error when is_map_key(Id, D#d.grave) -> {ok, maps:get(Id, D#d.grave), D};
        error ->
            {Dead, D1} = dead_pid(D),
            {ok, Dead, D1}
    end;
resolve(r, Bin, D) -> opaque(Bin, fun is_reference/1, bad_reference, D);
resolve(po, Bin, D) -> opaque(Bin, fun is_port/1, bad_port, D).

%% {r, Bin} and {po, Bin}: decoded safely, node names within the atom budget.
opaque(Bin, Check, Bad, D) ->
    Budget = min(D#d.atoms_left, server_atoms_left(D)),
    case fabric_peer_etf:decode(Bin, #{atoms_left => Budget, max_decompressed => 4096}) of
        {ok, V, New} ->
            case Check(V) of
                true -> {ok, V, spend_atoms(New, D)};
                false -> {error, {bad_payload, Bad}}
            end;
        {error, {bad_term, port}} when Bad =:= bad_port ->
            case catch binary_to_term(Bin, [safe]) of
                P when is_port(P) -> {ok, P, D};
                _ -> {error, {bad_payload, Bad}}
            end;
        {error, {limit, Why}} -> {error, {limit, Why}};
        {error, _} -> {error, {bad_payload, Bad}}
    end.

%%% ---------------------------------------------------------------- id tables

export(Pid, #d{exp_pid = EP} = D) ->
    case maps:find(Pid, EP) of
        {ok, Id} -> {Id, D};
        error ->
            Id = D#d.next_id,
            Ref = erlang:monitor(process, Pid),
            ok = monitor_in_place(Pid),
            {Id, D#d{next_id = Id + 1, exp_pid = EP#{Pid => Id},
                     exp_id = (D#d.exp_id)#{Id => Pid},
                     exp_mon = (D#d.exp_mon)#{Ref => Id}}}
    end.

%% Wait until Pid has handled our monitor signal. On OTP 25 a monitor signal can still sit
%% unhandled in the target's queue when the target, woken by a message sent by a third
%% process after monitor/2 returned, ends: the DOWN then says `noproc' instead of the real
%% reason, and so would the DEAD. Asking for `monitored_by' is handled by the target in
%% order after our monitor signal, so once it returns the monitor is in place (or Pid had
%% already ended, and `noproc' is the truth). See README, "Exit reasons of exported
%% processes". One round trip per exported pid, never repeated.
monitor_in_place(Pid) when node(Pid) =:= node() ->
    _ = erlang:process_info(Pid, monitored_by),
    ok;
monitor_in_place(_) -> ok.

%% The pid standing for the peer's process Id: its proxy, or the same dead proxy when the
%% process is remembered as ended (docs/protocol.md 4.3).
remote_pid(Id, #d{pgrave_id = G} = D) ->
    case G of
        #{Id := Dead} when not is_map_key(Id, D#d.prox_id) -> {Dead, D};
        _ -> proxy_for(Id, D)
    end.

proxy_for(Id, #d{prox_id = PI, o = #{max_proxies := Max}} = D) ->
    case maps:find(Id, PI) of
        {ok, Pid} -> {Pid, D};
        error when map_size(PI) >= Max ->
            %% caught per frame (established_frame/2): the frame is dropped with `limit'
            throw({fabric_limit, {max_proxies, Max}});
        error ->
            Pid = fabric_peer_proxy:start(self(), Id, D#d.token),
            %% a proxy made for a frame that is then dropped is ended (established_frame/2)
            case get('$fabric_fresh') of
                Fresh when is_list(Fresh) -> put('$fabric_fresh', [Pid | Fresh]);
                undefined -> ok
            end,
            Ref = erlang:monitor(process, Pid),
            true = ets:insert(?PROXIES, {Pid, self()}),
            {Pid, D#d{prox_id = PI#{Id => Pid}, prox_pid = (D#d.prox_pid)#{Pid => Id},
                      prox_mon = (D#d.prox_mon)#{Ref => Id}}}
    end.

%% Terminate a proxy with the remote process's reason (its monitor entry stays until DOWN).
end_proxy(Proxy, Reason, D) ->
    Id = maps:get(Proxy, D#d.prox_pid),
    fabric_peer_proxy:control(Proxy, D#d.token, {die, Reason}),
    ets:delete(?PROXIES, Proxy),
    bury_proxy(Proxy, Id, D#d{prox_id = maps:remove(Id, D#d.prox_id),
                              prox_pid = maps:remove(Proxy, D#d.prox_pid)}).

%% A stand-in proxy (see the exit2 frame) is remembered by pid but does not replace the
%% dead proxy remembered for its id.
discard_proxy(Pid) ->
    ets:delete(?PROXIES, Pid),
    exit(Pid, kill).

bury_proxy(Pid, Id, #d{pgrave = G, pgrave_id = GI, pgrave_q = Q} = D) ->
    Q1 = queue:in(Pid, Q),
    G1 = G#{Pid => Id},
    GI1 = case GI of #{Id := _} -> GI; _ -> GI#{Id => Pid} end,
    case queue:len(Q1) > ?GRAVE_SIZE of
        true ->
            {{value, Old}, Q2} = queue:out(Q1),
            OldId = maps:get(Old, G1),
            GI2 = case GI1 of #{OldId := Old} -> maps:remove(OldId, GI1); _ -> GI1 end,
            D#d{pgrave = maps:remove(Old, G1), pgrave_id = GI2, pgrave_q = Q2};
        false -> D#d{pgrave = G1, pgrave_id = GI1, pgrave_q = Q1}
    end.

kill_proxies(Reason, D) ->
    maps:fold(fun(P, _, Acc) -> end_proxy(P, Reason, Acc) end, D, D#d.prox_pid).

%% Forget both id tables (no session, or it was not resumed): proxies end with
%% `noconnection', exported processes are no longer watched.
reset_tables(D) ->
    D1 = kill_proxies(noconnection, D),
    maps:foreach(fun(Ref, _) -> erlang:demonitor(Ref, [flush]) end, D1#d.exp_mon),
    D1#d{exp_pid = #{}, exp_id = #{}, exp_mon = #{}, next_id = 1, grave = #{}, grave_pid = #{},
         grave_q = queue:new(), pgrave = #{}, pgrave_id = #{}, pgrave_q = queue:new(),
         recent_dead = queue:new(), redead = [],
         queue = queue:new(), queued_msgs = 0, session = undefined}.

down(Ref, Pid, Reason, D) ->
    case maps:take(Ref, D#d.exp_mon) of
        {Id, Mon} ->
            D1 = bury(Id, Pid, Reason, D#d{exp_mon = Mon, exp_pid = maps:remove(Pid, D#d.exp_pid),
                                           exp_id = maps:remove(Id, D#d.exp_id)}),
            Dead = {'DEAD', {pr, Id}, Reason},
            Recent = queue:in(Dead, D1#d.recent_dead),
            Recent1 = case queue:len(Recent) > ?RECENT_DEAD of
                          true -> queue:drop(Recent);
                          false -> Recent
                      end,
            emit(ctrl, Dead, D1#d{recent_dead = Recent1});
        error ->
            case maps:take(Ref, D#d.prox_mon) of
                {Id, PM} ->
                    D1 = D#d{prox_mon = PM},
                    case maps:find(Pid, D1#d.prox_pid) of
                        {ok, Id} ->
                            %% not ended by a DEAD: killed locally (exit(Proxy, kill))
                            ets:delete(?PROXIES, Pid),
                            D2 = bury_proxy(Pid, Id, D1#d{prox_id = maps:remove(Id, D1#d.prox_id),
                                                          prox_pid = maps:remove(Pid, D1#d.prox_pid)}),
                            case Reason =:= killed andalso link_enabled(D2) of
                                true ->
                                    {Sig, D3} = signaller(D2),
                                    {A, D4} = export(Sig, D3),
                                    emit(ctrl, {exit2, A, Id, kill}, D4);
                                false -> D2
                            end;
                        _ -> D1
                    end;
                error -> D
            end
    end.

bury(Id, Pid, Reason, #d{grave = G, grave_pid = GP, grave_q = Q} = D) ->
    Q1 = queue:in(Id, Q),
    G1 = G#{Id => Pid},
    GP1 = GP#{Pid => {Id, Reason}},
    case queue:len(Q1) > ?GRAVE_SIZE of
        true ->
            {{value, Old}, Q2} = queue:out(Q1),
            OldPid = maps:get(Old, G1),
            D#d{grave = maps:remove(Old, G1), grave_pid = maps:remove(OldPid, GP1), grave_q = Q2};
        false -> D#d{grave = G1, grave_pid = GP1, grave_q = Q1}
    end.

%% A pid whose process has already exited, substituted for an unknown {pl, Id}.
dead_pid(#d{dead_pid = undefined} = D) ->
    {Pid, Ref} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Ref, process, Pid, _} -> ok end,
    {Pid, D#d{dead_pid = Pid}};
dead_pid(#d{dead_pid = Pid} = D) -> {Pid, D}.

%% The sender id used for `exit(Proxy, kill)', whose real caller is unknown.
signaller(#d{signaller = undefined} = D) ->
    Pid = spawn_link(fun Loop() -> receive _ -> Loop() end end),
    {Pid, D#d{signaller = Pid}};
signaller(#d{signaller = Pid} = D) -> {Pid, D}.

link_enabled(#d{mode = extended, feats = #{<<"link">> := true}}) -> true;
link_enabled(_) -> false.

%% The peer's process A ended (its DEAD ended our proxy for it) and no proxy stands for it.
remote_ended(A, #d{prox_id = PI, pgrave_id = G}) ->
    not is_map_key(A, PI) andalso is_map_key(A, G).

reply_whereis_waiters(Reply, D) ->
    maps:foreach(fun(_, From) -> gen_statem:reply(From, Reply) end, D#d.whereis_waiting).

%%% ---------------------------------------------------------------- misc

heartbeat_timer(#d{mode = extended, feats = #{<<"heartbeat">> := true}} = D) ->
    case tick(D) of
        0 -> [];
        T -> [{{timeout, heartbeat}, T, tick}]
    end;
heartbeat_timer(_) -> [].

tick(#d{o = O, peer_hb = P}) ->
    case [X || X <- [maps:get(heartbeat, O), P], X > 0] of
        [] -> 0;
        L -> max(10, lists:min(L) div 2)
    end.

heartbeat_tick(#d{o = O, peer_hb = PeerHb} = D) ->
    Now = now_ms(),
    Mine = maps:get(heartbeat, O),
    case PeerHb > 0 andalso Now - D#d.last_in > 3 * PeerHb of
        true ->
            ?LOG_WARNING("fabric: no traffic from ~s for 3 heartbeats: connection lost", [D#d.peer]),
            lost(D, heartbeat_timeout);
        false ->
            D1 = case Mine > 0 andalso Now - D#d.last_out >= Mine of
                     true ->
                         N = D#d.hb_n,
                         emit(ctrl, {heartbeat, N}, D#d{hb_n = N + 1});
                     false -> D
                 end,
            {keep_state, D1, heartbeat_timer(D1)}
    end.

drop_socket(#d{sock = undefined} = D) -> D;
drop_socket(#d{t = T, sock = S} = D) ->
    fabric_peer_transport:close(T, S),
    D#d{sock = undefined}.

activate(#d{t = T, sock = S}) ->
    case fabric_peer_transport:activate(T, S) of
        ok -> ok;
        {error, Why} -> self() ! {fabric_send_failed, S, Why}, ok
    end.

policy_of(#d{ref = Ref, o = O}) ->
    case ets:lookup(?REG, {Ref, policy}) of
        [{_, P}] -> P;
        [] -> policy(O)
    end.

policy(O) ->
    fabric_peer_policy:new(maps:get(allowed, O), maps:get(force_system_names, O)).

server_atoms_left(#d{o = #{server_atoms := Ctr, max_server_atoms := Max}}) ->
    max(0, Max - atomics:get(Ctr, 1));
server_atoms_left(_) -> 16#7fffffff.

spend_atoms(0, D) -> D;
spend_atoms(N, #d{o = O} = D) ->
    case O of
        #{server_atoms := Ctr} -> atomics:add(Ctr, 1, N);
        _ -> ok
    end,
    D#d{atoms_left = max(0, D#d.atoms_left - N),
        stats = maps:update_with(new_atoms, fun(X) -> X + N end, D#d.stats)}.

name_bin(Name) when is_atom(Name) -> {ok, atom_to_binary(Name, utf8)};
name_bin(Name) when is_binary(Name) -> {ok, Name};
name_bin(Name) when is_list(Name) ->
    case catch unicode:characters_to_binary(Name) of
        B when is_binary(B) -> {ok, B};
        _ -> error
    end;
name_bin(_) -> error.

%% frames_out is counted in the process dictionary because raw_send is called from places
%% that do not thread the record back (error frames on the way to a close).
put_stat(Key) -> put({stat, Key}, get_stat(Key) + 1).
get_stat(Key) -> case get({stat, Key}) of undefined -> 0; N -> N end.

bump(frames_out, D) -> D;
bump(Key, #d{stats = S} = D) -> D#d{stats = maps:update_with(Key, fun(N) -> N + 1 end, 1, S)}.

now_ms() -> erlang:monotonic_time(millisecond).

info_map(State, D) ->
    Stats = (D#d.stats)#{frames_out => get_stat(frames_out)},
    Stats#{role => D#d.role, state => State, peer => D#d.peer,
           mode => case D#d.mode of undefined -> none; M -> M end,
           version => D#d.version, features => lists:sort(maps:keys(D#d.feats)),
           peer_node => D#d.peer_node, proxies => map_size(D#d.prox_id),
           exported => map_size(D#d.exp_id), next_id => D#d.next_id,
           session => D#d.session =/= undefined, queued => queue:len(D#d.queue),
           atoms_left => D#d.atoms_left,
           transport => fabric_peer_transport:name(D#d.t)}.
