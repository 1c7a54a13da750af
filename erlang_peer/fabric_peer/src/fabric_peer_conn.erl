%% @doc One fabric connection: the API every connection process answers, and what the two
%% lifecycles share. A connection is a `gen_statem' of one of two modules:
%% `fabric_peer_server' (an accepted socket: handshake, then established, detached while a
%% session waits for its client) or `fabric_peer_client' (connect, handshake, established,
%% disconnected while it backs off and reconnects). Both hand everything that happens in the
%% established state to `handle_common/4' here, which owns the socket I/O of that state:
%% bytes become frames (`fabric_peer_frame'), frames and local events go to the pure
%% `fabric_peer_protocol', and the actions it returns are carried out by `run/2'.
%%
%% Nothing received from the network can crash it (the protocol decodes every frame with
%% `fabric_peer_etf:decode/2'); the registry entries it needs are in `fabric_peer_registry'.
%%
%% Links: no tracing. A proxy traps exits and reports what it cannot leave to DEAD notices
%% (`exit/2' on it, the death of a local process linked to it with `link/1') as
%% `{fabric_proxy_exit, ...}', which becomes an `exit2' frame (README, "Links").
-module(fabric_peer_conn).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_conn.hrl").

-export([socket_ready/1, info/1, whereis/3, send/3, send_confirmed/4, close/1, await_ready/2, allow/2,
         drop_connection/1]).
-export([new_data/2, handle_common/4, established/3, lost/1, terminate/1, run/2,
         raw_send/2, drop_socket/1, activate/1, count_in/1]).

%% `Proxy ! Msg' messages taken from the mailbox per event (fabric_peer_conn_batch).
-define(PROXY_BATCH, 1024).
%% Busy with a stream (a batch of ?BUSY_BATCH proxy messages, a read of ?BUSY_READ bytes), a
%% connection keeps a minimum heap of ?BUSY_HEAP words until a ?HEAP_CHECK_MS period without:
%% the default took a minor collection every few messages (its state changes per message).
-define(BUSY_HEAP, 32768).
-define(BUSY_BATCH, 16).
-define(BUSY_READ, 8192).
-define(HEAP_CHECK_MS, 1000).

-type data() :: #d{}.
-export_type([data/0]).

%%% API

%% @doc The acceptor made this (server) process the socket's owner: start the handshake.
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

%% @doc A confirmed send (`acks'): `ok' once the peer delivered `Msg' to `Dest''s mailbox,
%% `{error, Code}' if it says why not, `{error, timeout}' after `Timeout' ms (a late result
%% is dropped), `{error, not_supported}' without `acks'.
-spec send_confirmed(pid(), pid() | atom() | {atom(), atom()}, term(), timeout()) -> ok | {error, term()}.
send_confirmed(Pid, Dest, Msg, Timeout) ->
    try gen_statem:call(Pid, {send_confirmed, Dest, Msg}, Timeout)
    catch exit:{timeout, _} -> {error, timeout}
    end.

%% @doc Close the connection (proxies end with `noconnection'). With `acks' it first waits
%% up to `close_timeout' ms for the peer to acknowledge what was written, so that a clean
%% close reports nothing (README, "Acknowledgements").
-spec close(pid()) -> ok.
close(Pid) ->
    _ = (catch gen_statem:call(Pid, flush_outbox, {dirty_timeout, 5000})),
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

%%% shared by the lifecycles

%% @doc The initial state of a connection process (called by its `init/1').
-spec new_data(server | client, map()) -> data().
new_data(Role, #{ref := Ref} = O) ->
    Token = make_ref(),
    Shared = #{token => Token, counters => counters:new(2, [write_concurrency]),
               send_timeout => maps:get(send_timeout, O),
               max_pending => maps:get(max_pending_messages, O)},
    ok = fabric_peer_registry:add_shared(self(), Shared),
    #d{role = Role, o = O, ref = Ref, t = transport(O), token = Token, shared = Shared,
       p = fabric_peer_protocol:new(O, fabric_peer_conn_env:new(Ref, Shared, O))}.

transport(#{tls := false}) -> tcp;
transport(#{tls := Opts}) -> {tls, Opts}.

role_module(#d{role = server}) -> fabric_peer_server;
role_module(#d{role = client}) -> fabric_peer_client.

%% @doc The events both lifecycles handle alike (each lifecycle's `handle_event/4' ends
%% with a call to this).
-spec handle_common(gen_statem:event_type(), term(), atom(), data()) ->
          gen_statem:event_handler_result(atom()).

%%% --- framing: bytes in, one frame at a time (the limit depends on the state)

handle_common(info, {Tag, S, Data}, established, #d{sock = S, buf = Buf} = D) when Tag =:= tcp; Tag =:= ssl ->
    %% established: the whole frames of this chunk are handled in this one event
    D1 = case byte_size(Data) >= ?BUSY_READ of true -> busy(D); false -> D end,
    frames(D1#d{buf = fabric_peer_frame:append(Buf, Data), last_in = now_ms()});
handle_common(info, {Tag, S, Data}, _, #d{sock = S, buf = Buf} = D) when Tag =:= tcp; Tag =:= ssl ->
    {keep_state, D#d{buf = fabric_peer_frame:append(Buf, Data)}, [{next_event, internal, parse}]};
handle_common(internal, parse, _, #d{sock = undefined}) ->
    keep_state_and_data;
handle_common(internal, parse, State, #d{o = O, buf = Buf} = D) ->
    Limit = case State of
                established -> maps:get(max_frame, O);
                _ -> maps:get(max_handshake_frame, O)
            end,
    case fabric_peer_frame:take(Buf, Limit) of
        {ok, Frame, Rest} ->
            {keep_state, D#d{buf = Rest},
             [{next_event, internal, {frame, Frame}}, {next_event, internal, parse}]};
        more when State =:= established ->
            {keep_state, arm(D)};
        more ->
            ok = activate(D),
            keep_state_and_data;
        {error, {frame_too_large, Len}} ->
            too_large(State, Len, D)
    end;

%%% --- established: frames from the peer

handle_common(internal, {frame, Bin}, established, D) ->
    case frame_in(Bin, D#d{last_in = now_ms()}) of
        {ok, D1} -> {keep_state, D1};
        Stop -> Stop
    end;

handle_common(info, {Tag, S}, State, #d{sock = S} = D) when Tag =:= tcp_passive; Tag =:= ssl_passive ->
    %% {active, N} ran out (fabric_peer_transport:arm/2): read on while established
    D1 = D#d{armed = false},
    case State of
        established -> {keep_state, arm(D1)};
        _ -> {keep_state, D1}
    end;
handle_common(info, {Tag, S}, State, #d{sock = S} = D) when Tag =:= tcp_closed; Tag =:= ssl_closed ->
    (role_module(D)):socket_gone(State, closed, D);
handle_common(info, {Tag, S, Why}, State, #d{sock = S} = D) when Tag =:= tcp_error; Tag =:= ssl_error ->
    (role_module(D)):socket_gone(State, Why, D);
handle_common(info, {fabric_send_failed, S, Why}, State, #d{sock = S} = D) ->
    (role_module(D)):socket_gone(State, Why, D);
handle_common(info, {Tag, _OldSock, _}, _, _) when Tag =:= tcp; Tag =:= ssl; Tag =:= tcp_error;
                                                   Tag =:= ssl_error; Tag =:= fabric_send_failed ->
    keep_state_and_data;
handle_common(info, {Tag, _OldSock}, _, _) when Tag =:= tcp_closed; Tag =:= ssl_closed; Tag =:= tcp_passive;
                                                Tag =:= ssl_passive ->
    keep_state_and_data;

%%% --- heartbeats

handle_common({timeout, heartbeat}, tick, established, D) ->
    heartbeat_tick(D);
handle_common({timeout, heartbeat}, tick, _, _) -> keep_state_and_data;

%%% --- local processes: proxies, exports

handle_common(info, {fabric_proxy_msg, Proxy, Msg}, _, D) ->
    proxy_batch({Proxy, [Msg]}, D);
handle_common(info, {fabric_proxy_msgs, Proxy, Msgs}, _, D) ->
    proxy_batch({Proxy, Msgs}, D);
handle_common(info, fabric_heap_check, _, D) ->
    {keep_state, heap_check(D)};
handle_common(info, {fabric_proxy_send, Proxy, From, Msg, Deadline}, _, #d{p = P} = D) ->
    {Acts, P1} = fabric_peer_protocol:proxy_send(Proxy, From, Msg, Deadline, P),
    {keep_state, apply_result({reply_first(Acts), P1}, D)};
handle_common(info, {fabric_proxy_dropped, Proxy, Msg}, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:proxy_dropped(Proxy, Msg, P), D)};
handle_common(info, {fabric_proxy_unsent, Proxy, Msgs}, _, #d{p = P} = D) ->
    %% a proxy ended with its connection's session: what waited in it is reported (11.7)
    Items = [fabric_peer_issue:item(Proxy, M, unsent) || M <- Msgs],
    {_, D1} = run([{undelivered, fabric_peer_protocol:end_reason(P), Items}], D),
    {keep_state, D1};
handle_common(info, fabric_grant_due, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:grant_due(P), D)};
handle_common(info, {fabric_proxy_exit, Proxy, From, Reason}, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:proxy_exit(Proxy, From, Reason, P), D)};
handle_common(info, {fabric_proxy_barrier, Proxy, N}, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:barrier_passed(Proxy, N, P), D)};
handle_common(info, {'DOWN', Ref, process, Pid, Reason}, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:down(Ref, Pid, Reason, P), D)};
handle_common(info, fabric_ack_due, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:ack_due(P), D)};
handle_common(info, fabric_send_expire, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:expire(now_ms(), P), D)};
handle_common(info, {fabric_route, _} = Ev, State, D) -> fabric_peer_route_conn:info(Ev, State, D);
handle_common(info, {{fabric_route, _, _}, _} = Ev, State, D) -> fabric_peer_route_conn:info(Ev, State, D);
handle_common(info, {{fabric_route, _, _}, _, process, _, _} = Ev, State, D) ->
    fabric_peer_route_conn:info(Ev, State, D);
handle_common(info, {'EXIT', _Pid, _Reason}, _, _) ->
    %% the signaller or the dead-pid placeholder: nothing to do
    keep_state_and_data;

%%% --- calls

handle_common({call, From}, await_ready, established, _) ->
    {keep_state_and_data, [{reply, From, ok}]};
handle_common({call, From}, await_ready, _, D) ->
    {keep_state, D#d{waiters = [From | D#d.waiters]}};
handle_common({call, From}, drop_connection, established, D) ->
    gen_statem:reply(From, ok),
    (role_module(D)):lost(D, dropped);
handle_common({call, From}, drop_connection, _, _) ->
    {keep_state_and_data, [{reply, From, {error, not_connected}}]};
handle_common({call, From}, info, State, D) ->
    {keep_state_and_data, [{reply, From, info_map(State, D)}]};
handle_common({call, From}, {allow, Names}, _, #d{ref = Ref, o = O, p = P} = D) ->
    Allowed = lists:usort(maps:get(allowed, O) ++ Names),
    O1 = O#{allowed => Allowed},
    ok = fabric_peer_registry:set_policy(
           Ref, fabric_peer_policy:new(Allowed, maps:get(force_system_names, O1))),
    {keep_state, D#d{o = O1, p = fabric_peer_protocol:set_opts(O1, P)}, [{reply, From, ok}]};
handle_common({call, From}, {whereis, Name}, State, #d{p = P} = D) ->
    case {State, name_bin(Name)} of
        {_, error} -> {keep_state_and_data, [{reply, From, {error, badarg}}]};
        {established, {ok, Bin}} ->
            {keep_state, apply_result(fabric_peer_protocol:whereis(Bin, From, P), D)};
        _ -> {keep_state_and_data, [{reply, From, {error, not_connected}}]}
    end;
handle_common({call, From}, {send, Dest, Msg}, _, #d{p = P} = D) ->
    {Reply, Acts, P1} = fabric_peer_protocol:send(Dest, Msg, From, P),
    {Written, D1} = run(Acts, D#d{p = P1}),
    case Reply of
        wait -> {keep_state, D1};
        ok -> {keep_state, D1, [{reply, From, Written}]};
        _ -> {keep_state, D1, [{reply, From, Reply}]}
    end;
handle_common({call, From}, {send_confirmed, Dest, Msg}, _, #d{p = P} = D) ->
    {Reply, Acts, P1} = fabric_peer_protocol:send_confirmed(Dest, Msg, From, P),
    {_, D1} = run(Acts, D#d{p = P1}),
    case Reply of
        wait -> {keep_state, D1};
        _ -> {keep_state, D1, [{reply, From, Reply}]}
    end;
handle_common({call, From}, {fabric_route, Cmd}, State, D) ->
    fabric_peer_route_conn:call(Cmd, From, State, D);
handle_common({call, From}, {fabric_global, Cmd}, State, D) ->
    fabric_peer_cluster_global:call(Cmd, From, State, D);
handle_common({call, From}, flush_outbox, _, #d{p = P} = D) ->
    {keep_state, apply_result(fabric_peer_protocol:flush(From, P), D)};
handle_common({call, From}, _, _, _) ->
    {keep_state_and_data, [{reply, From, {error, badarg}}]};
handle_common(_, _, _, _) ->
    keep_state_and_data.

%% The frames of the buffer, one after the other (as the `parse' events would: nothing else
%% is handled between them), until a partial one: then the socket is asked for more.
frames(#d{o = O, buf = Buf} = D) ->
    case fabric_peer_frame:take(Buf, maps:get(max_frame, O)) of
        {ok, Frame, Rest} ->
            case frame_in(Frame, D#d{buf = Rest}) of
                {ok, D1} -> frames(D1);
                Stop -> Stop
            end;
        more ->
            {keep_state, arm(D)};
        {error, {frame_too_large, Len}} ->
            too_large(established, Len, D)
    end.

%% One frame received in the established state: `{ok, D}', or the lifecycle's result when
%% too many errors close the connection.
frame_in(Bin, #d{p = P} = D) ->
    {Status, Acts, P1} = fabric_peer_protocol:frame(Bin, P),
    {_, D1} = run(Acts, D#d{p = P1}),
    case Status of
        ok -> {ok, D1};
        close -> (role_module(D1)):lost(D1, closed_by_us)
    end.

%% A burst of `Proxy ! Msg' taken in one event (fabric_peer_conn_batch); a proxy's other
%% message that ended it is handled next, in its place.
proxy_batch(First, #d{p = P} = D) ->
    {Acts, Taken, P1, Next} = fabric_peer_conn_batch:take(First, ?PROXY_BATCH, P),
    D1 = apply_result({Acts, P1}, case Taken >= ?BUSY_BATCH of true -> busy(D); false -> D end),
    case Next of
        none -> {keep_state, D1};
        _ -> {keep_state, D1, [{next_event, info, Next}]}
    end.

%% A `send/2' through a proxy written at once: its result does not depend on the write (a
%% frame not written is kept, or dropped as the message would be), so the caller is
%% answered first and prepares its next message while this process writes (issue 15).
reply_first([{send, _, _} = A, {reply, _, _} = R]) -> [R, A];
reply_first(Acts) -> Acts.

busy(#d{busy = active} = D) -> D;
busy(#d{busy = quiet} = D) -> D#d{busy = active};
busy(D) -> _ = process_flag(min_heap_size, ?BUSY_HEAP), heap_check(D#d{busy = active}).

heap_check(#d{busy = active} = D) ->
    _ = erlang:send_after(?HEAP_CHECK_MS, self(), fabric_heap_check),
    D#d{busy = quiet};
heap_check(D) ->
    {min_heap_size, Default} = erlang:system_info(min_heap_size),
    _ = process_flag(min_heap_size, Default),
    true = erlang:garbage_collect(),
    D#d{busy = idle}.

apply_result({Acts, P}, D) ->
    {_, D1} = run(Acts, D#d{p = P}),
    D1.

%% @doc The handshake completed: enter the established state. `Params': `mode', and for an
%% extended peer `features', `version', `peer_node', `peer_max', `peer_hb', `session'.
-spec established(map(), boolean(), data()) -> gen_statem:event_handler_result(atom()).
established(Params, Resumed, #d{p = P0} = D0) ->
    ok = fabric_peer_admission:authenticated(D0#d.o),
    Mode = maps:get(mode, Params),
    %% a client that was connected before and did not resume starts fresh
    Reset = D0#d.ever_connected andalso not Resumed,
    {Acts, P1} = fabric_peer_protocol:established(Params, Reset, Resumed,
                                                  fabric_peer_protocol:set_peer(D0#d.peer, P0)),
    Sid0 = case Reset of
               true -> undefined;
               false -> D0#d.session
           end,
    D1 = D0#d{p = P1, version = maps:get(version, Params, 0),
              peer_node = maps:get(peer_node, Params, <<>>),
              peer_hb = maps:get(peer_hb, Params, 0),
              hs = #{}, attempt = 0, last_in = now_ms(), last_out = now_ms()},
    D2 = register_session(maps:get(session, Params, Sid0), D1),
    {_, D30} = run(Acts, D2#d{ever_connected = true}),
    D3 = fabric_peer_route_conn:established(D30),
    [gen_statem:reply(W, ok) || W <- D3#d.waiters],
    ?LOG_INFO(#{what => connection_established, peer => D3#d.peer, mode => Mode,
                features => lists:sort(maps:keys(fabric_peer_protocol:features(P1)))}, ?FABRIC_LOG),
    {next_state, established, D3#d{waiters = []},
     [{{timeout, handshake}, cancel}, {{timeout, session}, cancel}, {next_event, internal, parse}
      | heartbeat_timer(D3)]}.

register_session(undefined, D) -> D#d{session = undefined};
register_session(Sid, #d{role = server, ref = Ref, o = O} = D) ->
    ok = fabric_peer_registry:register_session(Ref, Sid, self()),
    ok = fabric_peer_cluster:session(O, Sid),   % resumable at the other servers
    D#d{session = Sid};
register_session(Sid, D) -> D#d{session = Sid}.

%% @doc The socket of an established connection is gone: it is closed, waiting `whereis'
%% callers get `{error, not_connected}', frames go to the outbox from now on.
-spec lost(data()) -> data().
lost(#d{p = P} = D) ->
    apply_result(fabric_peer_protocol:lost({error, not_connected}, P), drop_socket(D)).

%% @doc The connection ends: proxies end with `noconnection', waiting callers get
%% `{error, closed}', the socket is closed.
-spec terminate(data()) -> data().
terminate(#d{p = P, shared = #{counters := Ctr}} = D) ->
    {_, D1} = run(fabric_peer_protocol:terminate(P), D),
    %% what still waited in the proxies (told to end just now) is reported too (11.7)
    fabric_peer_report:proxies_unsent(Ctr, fabric_peer_protocol:end_reason(P), D1),
    [gen_statem:reply(W, {error, closed}) || W <- D1#d.waiters],
    ok = fabric_peer_registry:remove_shared(self()),
    drop_socket(D1#d{waiters = []}).

%% A length header over the limit: the stream cannot be resynchronised, so close
%% (after an error frame to an extended peer).
too_large(State, Len, #d{p = P} = D) ->
    ?LOG_WARNING(#{what => frame_too_large, peer => D#d.peer, size => Len,
                   limit => maps:get(max_frame, D#d.o), then => close}, ?FABRIC_LOG),
    D1 = apply_result(fabric_peer_protocol:too_large(Len, P), D),
    case State of
        established -> (role_module(D1)):lost(D1, closed_by_us);
        _ -> (role_module(D1)):socket_gone(State, fabric_peer_frame:header_reason(D1#d.role, Len), D1)
    end.

%% @doc Carry out the protocol's actions in order. Returns the first error of a message
%% that could neither be written nor kept (for the reply to `send/3').
%% Consecutive frames are written in one socket write.
-spec run([fabric_peer_protocol:action()], data()) -> {ok | {error, term()}, data()}.
run(Acts, D) ->
    {R, #d{p = P} = D1} = run(Acts, [], {ok, D}),
    %% proxies whose messages were carried out may forward more; the proxies see how many
    %% messages wait here (12.6)
    case fabric_peer_protocol:allowances(P) of
        {[], N, _} -> {R, pending(N, D1)};
        {Allow, N, P1} ->
            {_, D2} = run(Allow, [], {ok, D1#d{p = P1}}),
            {R, pending(N, D2)}
    end.

%% (written only when it changed: the proxies read it, the connection alone writes it)
pending(N, #d{pending = N} = D) -> D;
pending(N, #d{shared = #{counters := Ctr}} = D) -> counters:put(Ctr, 2, N), D#d{pending = N}.

run([{send, Kind, Bin} | T], Batch, Acc) -> run(T, [{Kind, Bin} | Batch], Acc);
run([A | T], Batch, Acc) -> run(T, [], run1(A, write_batch(Batch, Acc)));
run([], Batch, Acc) -> write_batch(Batch, Acc).

write_batch([], Acc) -> Acc;
write_batch(Rev, {R, #d{t = T, sock = S, p = P} = D}) ->
    Batch = lists:reverse(Rev),
    Result = case S of
                 undefined -> {error, closed};
                 _ -> fabric_peer_transport:send_many(T, S, [B || {_, B} <- Batch])
             end,
    case Result of
        ok ->
            {R, D#d{p = fabric_peer_protocol:count(frames_out, length(Batch), P), last_out = now_ms()}};
        {error, Why} ->
            %% not written: keep them for a resumed session (dropped otherwise)
            _ = [self() ! {fabric_send_failed, S, Why} || S =/= undefined],
            lists:foldl(fun({Kind, Bin}, {R0, #d{p = P0} = D0}) ->
                                {R1, P1} = fabric_peer_protocol:unsent(Kind, Bin, P0),
                                {case R0 of ok -> R1; _ -> R0 end, D0#d{p = P1}}
                        end, {R, D}, Batch)
    end.
run1({write, Bin}, {R, D}) ->
    {_, D1} = raw_send(Bin, D),
    {R, D1};
run1({deliver, Target, Msg}, {_, #d{p = P}} = Acc) ->
    %% with credit a slow receiver is held back by its credit (docs/protocol.md 12.3);
    %% without, by the fairness wait of fabric_peer_flow
    case fabric_peer_protocol:credit_on(P) of
        true -> Target ! Msg;
        false -> ok = fabric_peer_flow:deliver(Target, Msg)
    end,
    Acc;
run1({control, Proxy, Cmd}, {_, #d{token = Token}} = Acc) ->
    ok = fabric_peer_proxy:control(Proxy, Token, Cmd),
    Acc;
run1({signal, Proxy, Cmd}, {_, #d{token = Token}} = Acc) ->
    ok = fabric_peer_proxy:signal(Proxy, Token, Cmd),
    ok = fabric_peer_flow:signalled(),
    Acc;
run1({reply, From, Reply}, Acc) ->
    gen_statem:reply(From, Reply),
    Acc;
run1({monitor_export, Pid, Id}, {R, #d{p = P} = D}) ->
    Ref = erlang:monitor(process, Pid),
    ok = monitor_in_place(Pid),
    {R, D#d{p = fabric_peer_protocol:watch_export(Ref, Id, P)}};
run1({monitor_proxy, Pid, Id}, {R, #d{p = P} = D}) ->
    Ref = erlang:monitor(process, Pid),
    ok = fabric_peer_registry:add_proxy(Pid, self()),
    {R, D#d{p = fabric_peer_protocol:watch_proxy(Ref, Id, P)}};
run1({forget_proxy, Pid}, Acc) ->
    ok = fabric_peer_registry:remove_proxy(Pid),
    Acc;
run1({discard_proxy, Pid}, Acc) ->
    ok = fabric_peer_registry:remove_proxy(Pid),
    exit(Pid, kill),
    Acc;
run1({demonitor, Ref}, Acc) ->
    erlang:demonitor(Ref, [flush]),
    Acc;
run1({ack_timer, Ms}, Acc) ->
    _ = erlang:send_after(Ms, self(), fabric_ack_due),
    Acc;
run1({grant_timer, Ms}, Acc) ->
    _ = erlang:send_after(Ms, self(), fabric_grant_due),
    Acc;
run1({send_timer, Ms}, Acc) ->
    _ = erlang:send_after(Ms + 1, self(), fabric_send_expire),
    Acc;
run1({route, Cmd}, {R, D}) ->
    {R, fabric_peer_route_conn:action(Cmd, D)};
run1({global, Cmd}, {R, D}) ->
    {R, fabric_peer_cluster_global:action(Cmd, D)};
run1({undelivered, Reason, Items}, {_, D} = Acc) ->
    fabric_peer_report:undelivered(Reason, Items, D),
    Acc.

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


%% @doc Write one frame on the socket (counted in `frames_out').
-spec raw_send(iodata(), data()) -> {ok | {error, term()}, data()}.
raw_send(Bin, #d{t = T, sock = S, p = P} = D) when S =/= undefined ->
    case fabric_peer_transport:send(T, S, Bin) of
        ok -> {ok, D#d{p = fabric_peer_protocol:count(frames_out, P)}};
        E -> {E, D}
    end;
raw_send(_, D) -> {{error, closed}, D}.

%% @doc Close the socket, if any.
-spec drop_socket(data()) -> data().
drop_socket(#d{sock = undefined} = D) -> D;
drop_socket(#d{t = T, sock = S} = D) ->
    fabric_peer_transport:close(T, S),
    %% a partial frame of the old socket is no frame of the next one
    D#d{sock = undefined, buf = <<>>, armed = false}.

%% @doc Ask for the next bytes of the socket (a failure arrives as `fabric_send_failed').
-spec activate(data()) -> ok.
activate(#d{t = T, sock = S}) ->
    case fabric_peer_transport:activate(T, S) of
        ok -> ok;
        {error, Why} -> self() ! {fabric_send_failed, S, Why}, ok
    end.

%% Established: keep reading. A TCP or TLS socket stays active for several reads
%% (fabric_peer_transport:arm/2) and says when it stops (`tcp_passive', `ssl_passive'); a
%% relay is asked for each read.
arm(#d{armed = true} = D) -> D;
arm(#d{t = T, sock = S} = D) ->
    case fabric_peer_transport:arm(T, S) of
        {ok, Armed} -> D#d{armed = Armed};
        {error, Why} -> self() ! {fabric_send_failed, S, Why}, D
    end.

%% @doc Count a handshake frame received.
-spec count_in(data()) -> data().
count_in(#d{p = P} = D) -> D#d{p = fabric_peer_protocol:count(frames_in, P)}.

%% @doc Now, in ms (monotonic).
-spec now_ms() -> integer().
now_ms() -> erlang:monotonic_time(millisecond).

%%% heartbeats

heartbeat_timer(#d{p = P} = D) ->
    case {fabric_peer_protocol:mode(P), fabric_peer_protocol:features(P)} of
        {extended, #{<<"heartbeat">> := true}} ->
            case tick(D) of
                0 -> [];
                T -> [{{timeout, heartbeat}, T, tick}]
            end;
        _ -> []
    end.

tick(#d{o = O, peer_hb = P}) ->
    case [X || X <- [maps:get(heartbeat, O), P], X > 0] of
        [] -> 0;
        L -> max(10, lists:min(L) div 2)
    end.

heartbeat_tick(#d{o = O, peer_hb = PeerHb, p = P} = D) ->
    Now = now_ms(),
    Mine = maps:get(heartbeat, O),
    case PeerHb > 0 andalso Now - D#d.last_in > 3 * PeerHb of
        true ->
            ?LOG_WARNING(#{what => heartbeat_timeout, peer => D#d.peer, silent_ms => Now - D#d.last_in,
                           text => "no traffic for 3 heartbeats: connection lost"}, ?FABRIC_LOG),
            (role_module(D)):lost(D, heartbeat_timeout);
        false ->
            D1 = case Mine > 0 andalso Now - D#d.last_out >= Mine of
                     true -> apply_result(fabric_peer_protocol:heartbeat(P), D);
                     false -> D
                 end,
            {keep_state, D1, heartbeat_timer(D1)}
    end.

%%% misc

name_bin(Name) when is_atom(Name) -> {ok, atom_to_binary(Name, utf8)};
name_bin(Name) when is_binary(Name) -> {ok, Name};
name_bin(Name) when is_list(Name) ->
    case catch unicode:characters_to_binary(Name) of
        B when is_binary(B) -> {ok, B};
        _ -> error
    end;
name_bin(_) -> error.

info_map(State, #d{p = P} = D) ->
    (fabric_peer_protocol:info(P))#{
      role => D#d.role, state => State, peer => D#d.peer, version => D#d.version,
      peer_node => D#d.peer_node, session => D#d.session =/= undefined,
      transport => fabric_peer_transport:name(D#d.t)}.
