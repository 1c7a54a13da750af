%% @doc The established protocol of one connection, without I/O (docs/protocol.md 4-9):
%% frames and local events in, actions out. The connection process (`fabric_peer_conn')
%% writes the frames, delivers the messages and starts the monitors it is told to.
%%
%% Every entry point returns the actions it produced, in order:
%% <ul>
%% <li>`{send, msg | ctrl, Bin}': write a frame (kept in the outbox if the write fails);</li>
%% <li>`{write, Bin}': write an error frame if a socket is there (best effort, never kept);</li>
%% <li>`{deliver, Dest, Msg}': send `Msg' to a local pid or `{Name, Node}';</li>
%% <li>`{control, Proxy, Cmd}': a control command to a proxy (`fabric_peer_proxy:control/3');</li>
%% <li>`{signal, Proxy, Cmd}': a signal sent by a proxy, done before the next action
%%   (`fabric_peer_proxy:signal/3', so a later message cannot overtake it);</li>
%% <li>`{reply, From, Reply}': answer a waiting `gen_statem' caller;</li>
%% <li>`{monitor_export, Pid, Id}' / `{monitor_proxy, Pid, Id}': monitor a new export or
%%   proxy and report the monitor back (`watch_export/3', `watch_proxy/3');</li>
%% <li>`{forget_proxy, Pid}', `{discard_proxy, Pid}' (a proxy made for a dropped frame:
%%   killed), `{demonitor, Ref}'.</li>
%% </ul>
%%
%% What must be answered at once comes from the `env' given to `new/2': starting a proxy
%% (its pid goes into the decoded term), the exited placeholder and the signaller pids,
%% `whereis' of a local name, the name policy and the server-wide atom budget. Tests pass
%% their own. Logs are written here, once per event.
%%
%% The frames of one job are handled by its module, on the same state (the record of
%% `fabric_peer_protocol.hrl'): destinations and whereis `fabric_peer_names', links and
%% exit signals `fabric_peer_links', payloads `fabric_peer_payload', local commands
%% `fabric_peer_commands', `acks' `fabric_peer_acks', `credit' `fabric_peer_flowctl' and
%% `fabric_peer_issue', `route' `fabric_peer_route'. This module reads each frame,
%% dispatches it and applies the error table.
%%
%% Incoming frames follow the error table of section 9: a bad frame is dropped and counted,
%% an extended peer gets an error frame, and too many errors close the connection.
-module(fabric_peer_protocol).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([new/2, established/4, frame/2, too_large/2, send/3, send/4, send_confirmed/4,
         proxy_msg/3, proxy_exit/4,
         down/4, barrier_passed/3, whereis/3, heartbeat/1, lost/2, detach/1, reset/1, reset/2,
         terminate/1,
         watch_export/3, watch_proxy/3, unsent/3, count/2, count/3, set_peer/2, set_opts/2,
         mode/1, features/1, connected/1, info/1]).
%% acks (fabric_peer_acks)
-export([ack_due/1, expire/2, flush/2, resumable/3, resume_ok/2, set_end_reason/2,
         received/1]).
%% credit and the proxies' allowance (fabric_peer_flowctl, fabric_peer_issue)
-export([grant_due/1, end_reason/1, proxy_send/5, proxy_dropped/3, allowances/1, credit_on/1]).
%% for fabric_peer_acks
-export([incoming/3]).
%% send/3 and connected/1 are the pure API the unit tests drive (the connection uses send/4)
-ignore_xref([send/3, connected/1]).
%% `[alias | Ref]' is OTP's reply tag of a gen call: improper on purpose
-dialyzer({no_improper_lists, [gen_call_in/2]}).

-export_type([proto/0, env/0, action/0]).

-type env() :: #{self := pid(),
                 spawn_proxy := fun((integer()) -> pid()),
                 placeholder := fun(() -> pid()),
                 signaller := fun(() -> pid()),
                 whereis := fun((atom()) -> pid() | undefined),
                 policy := fun(() -> fabric_peer_policy:policy() | undefined),
                 server_atoms_left := fun(() -> non_neg_integer()),
                 spend_server_atoms := fun((pos_integer()) -> ok),
                 %% credit (12.3): a local process's mailbox length, and what waits in
                 %% the connection of a local proxy
                 mailbox => fun((pid()) -> non_neg_integer() | gone),
                 proxies_pending => fun(() -> non_neg_integer()),
                 %% a routing server's node table, by client node name
                 route => fun((binary()) -> {ok, pid()} | not_allowed | none)}.

-type action() :: {send, msg | ctrl, binary()} | {write, binary()}
                | {deliver, pid() | {atom(), atom()}, term()}
                | {control | signal, pid(), term()} | {reply, gen_statem:from(), term()}
                | {monitor_export | monitor_proxy, pid(), integer()}
                | {forget_proxy | discard_proxy, pid()} | {demonitor, reference()}
                | {ack_timer | send_timer | grant_timer, pos_integer()}
                | {undelivered, atom(), [map()]}
                | {route, tuple()}
                | {global, tuple()}.

-include("fabric_peer_protocol.hrl").

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [rewrite_in/2, proxy_for/2, end_proxy/3, spend_atoms/2,
                              server_atoms_left/1, fail/4, act/2]).

-type proto() :: #p{}.

-type result() :: {[action()], proto()}.

%%% creation and lifecycle

%% @doc A protocol state for a connection with settings `O' (`fabric_peer_opts').
-spec new(map(), env()) -> proto().
new(O, Env) ->
    #p{o = O, env = Env, peer_max = maps:get(max_frame, O), s = fabric_peer_session:new(),
       window = fabric_peer_frame:new_window(maps:get(max_errors, O), maps:get(error_window, O)),
       atoms_left = maps:get(max_new_atoms, O),
       stats = #{errors => 0, connects => 0, new_atoms => 0, local_errors => 0}}.

%% @doc The handshake completed with `Params' (`mode', `features', `peer_max'; with
%% `acks' and `Resumed' also `peer_received'; a refused resume may give `resume_refused').
%% `Reset': forget the old session first (a reconnect that did not resume). `Resumed': the
%% outbox and the last DEAD notices are written now (with `acks': the outbox from the
%% peer's count on, section 11.5); otherwise the outbox is dropped.
-spec established(map(), boolean(), boolean(), proto()) -> result().
established(Params, Reset, Resumed, #p{o = O} = P0) ->
    P1 = count(connects, P0#p{mode = maps:get(mode, Params),
                              feats = fabric_peer_rewrite:features(maps:get(features, Params, [])),
                              peer_max = maps:get(peer_max, Params, maps:get(max_frame, O))}),
    P2 = case Reset of
             true ->
                 Why = case maps:get(resume_refused, Params, undefined) of
                           <<"not_resumable">> -> not_resumable;
                           _ -> session_expired
                       end,
                 reset_tables(Why, P1);
             false -> P1
         end,
    P3 = P2#p{connected = true},
    case Resumed andalso fabric_peer_acks:on(P3) of
        true -> done(fabric_peer_acks:resume(maps:get(peer_received, Params), P3));
        false when Resumed -> done(flush_outbox(true, P3));
        false -> done(flush_outbox(false, fabric_peer_acks:start(Params, P3)))
    end.

flush_outbox(true, #p{s = S} = P) ->
    {Queued, S1} = fabric_peer_session:take_outbox(S),
    Resend = [B || B <- [fabric_peer_frame:encode_plain(T) || T <- fabric_peer_session:recent_dead(S)],
                   not lists:member(B, Queued)],
    lists:foldl(fun(Bin, Acc) -> act({send, ctrl, Bin}, Acc) end, P#p{s = S1}, Resend ++ Queued);
flush_outbox(false, #p{s = S} = P) ->
    case fabric_peer_session:take_outbox(S) of
        {[], _} -> P;
        {Dropped, S1} ->
            ?LOG_WARNING(#{what => queued_frames_dropped, peer => P#p.peer, frames => length(Dropped),
                           reason => not_resumed}, ?FABRIC_LOG),
            P#p{s = S1}
    end.

%% @doc The socket is gone: waiting `whereis' callers get `Reply'; frames are kept in the
%% outbox from now on.
-spec lost(term(), proto()) -> result().
lost(Reply, P) ->
    P1 = fabric_peer_route:lost(fabric_peer_names:reply_waiters(Reply, P)),
    done(P1#p{connected = false, whereis_waiting = #{}}).

%% @doc The socket was taken away (a resuming connection claimed the session): frames are
%% kept in the outbox from now on.
-spec detach(proto()) -> proto().
detach(P) -> P#p{connected = false}.

%% @doc Forget the session (no session, or it was not resumed): proxies end with
%% `noconnection', exported processes are no longer watched.
-spec reset(proto()) -> result().
reset(P) -> reset(session_expired, P).

%% @doc `reset/1', the session ending for `Reason' (reported with `acks', section 11.7).
-spec reset(atom(), proto()) -> result().
reset(Why, P) -> done(reset_tables(Why, P)).

reset_tables(Why, P0) ->
    #p{s = S} = P = fabric_peer_route:session_end(fabric_peer_acks:end_session(Why, P0)),
    {Proxies, Monitors, S1} = fabric_peer_session:reset(S),
    P1 = lists:foldl(fun(Proxy, Acc) -> act({forget_proxy, Proxy}, act({control, Proxy, {die, noconnection}}, Acc)) end,
                     P, Proxies),
    P2 = lists:foldl(fun(Ref, Acc) -> act({demonitor, Ref}, Acc) end, P1, Monitors),
    fabric_peer_dead_order:session_end(P2#p{s = S1, redead = []}).

%% @doc The connection ends: its proxies end with `noconnection', `whereis' callers get
%% `{error, closed}'.
-spec terminate(proto()) -> [action()].
terminate(#p{s = S} = P0) ->
    P = fabric_peer_route:session_end(fabric_peer_acks:end_session(P0#p.end_reason,
                                                                   fabric_peer_dead_order:flush(P0))),
    P1 = lists:foldl(fun(Proxy, Acc) -> end_proxy(Proxy, noconnection, Acc) end, P,
                     fabric_peer_session:proxies(S)),
    {Acts, _} = done(fabric_peer_names:reply_waiters({error, closed}, P1)),
    Acts.

%% @doc Record the monitor the connection started for a `monitor_export' action.
-spec watch_export(reference(), pos_integer(), proto()) -> proto().
watch_export(Ref, Id, #p{s = S} = P) -> P#p{s = fabric_peer_session:watch_export(Ref, Id, S)}.

%% @doc Record the monitor the connection started for a `monitor_proxy' action.
-spec watch_proxy(reference(), integer(), proto()) -> proto().
watch_proxy(Ref, Id, #p{s = S} = P) -> P#p{s = fabric_peer_session:watch_proxy(Ref, Id, S)}.

%% @doc A `send' action could not be written: keep the frame for a resumed session (with
%% `acks' a sequenced frame is in the outbox already, and the rest is connection-scoped).
-spec unsent(msg | ctrl, binary(), proto()) -> {ok | {error, term()}, proto()}.
unsent(Kind, Bin, #p{s = S, o = #{max_queue := Max}} = P) ->
    case fabric_peer_acks:on(P) of
        true -> {ok, P};
        false -> keep_unsent(Kind, Bin, Max, S, P)
    end.

keep_unsent(Kind, Bin, Max, S, P) ->
    {R, S1} = fabric_peer_session:enqueue(Kind, Bin, Max, S),
    {R, P#p{s = S1}}.

%% @doc The peer's address, as the logs name it.
-spec set_peer(binary(), proto()) -> proto().
set_peer(Peer, P) -> P#p{peer = Peer}.

%% @doc Replace the settings (after `allow/2' changed `allowed').
-spec set_opts(map(), proto()) -> proto().
set_opts(O, P) -> P#p{o = O}.

%% @doc Add one to counter `Key' of `info/1'.
%% A DEAD's reason is raw (4.4): the pids, references and ports in it keep their nodes, new
%% atoms within the budget like any atom of a reason, so links and monitors see the real
%% reason. The frame is plain term_to_binary: a 3-tuple whose first element is 'DEAD'.
-spec unknown_nodes(binary()) -> create | refuse.
unknown_nodes(<<131, 104, 3, Tag, 4, "DEAD", _/binary>>) when Tag =:= 115; Tag =:= 119 -> create;
unknown_nodes(<<131, 104, 3, Tag, 0, 4, "DEAD", _/binary>>) when Tag =:= 100; Tag =:= 118 -> create;
unknown_nodes(_) -> refuse.

-spec count(atom(), proto()) -> proto().
count(Key, P) -> count(Key, 1, P).

%% @doc Add `N' to counter `Key' of `info/1'.
-spec count(atom(), pos_integer(), proto()) -> proto().
%% the counters of every frame and message are fields (cheaper than the map, issue 15)
count(frames_in, N, #p{frames_in = V} = P) -> P#p{frames_in = V + N};
count(frames_out, N, #p{frames_out = V} = P) -> P#p{frames_out = V + N};
count(messages_in, N, #p{messages_in = V} = P) -> P#p{messages_in = V + N};
count(messages_out, N, #p{messages_out = V} = P) -> P#p{messages_out = V + N};
count(Key, N, #p{stats = St} = P) ->
    case St of
        #{Key := V} -> P#p{stats = St#{Key := V + N}};
        _ -> P#p{stats = St#{Key => N}}
    end.

%%% frames from the peer

%% @doc One frame received in the established state. `close': too many errors.
-spec frame(binary(), proto()) -> {ok | close, [action()], proto()}.
frame(Bin, P0) ->
    P = count(frames_in, P0),
    case decode(Bin, P) of
        {ok, Term, New} ->
            {Credited, Verdict, P1} = fabric_peer_flowctl:received(Term, byte_size(Bin),
                                                                   spend_atoms(New, P)),
            Result = case Verdict =:= ok andalso first_in(Term, P1) of
                         false -> fabric_peer_flowctl:exceeded(Term, P1);
                         pass ->
                             dispatch(screen(fabric_peer_frame:classify(Term, P1#p.mode, P1#p.feats), P1), P1);
                         R -> R
                     end,
            %% a dropped frame's credit is returned before its error frame is written
            {Status, #p{s = S} = P2} = case Result of
                               {ok, Pd} -> {ok, fabric_peer_flowctl:settle_handled(Credited, Term, Pd)};
                               {close, Pc} -> {close, fabric_peer_flowctl:settle(Credited, Pc)};
                               {refused, Code, Why, Pr} ->
                                   %% a refused mc: counted as dropped, its mc_result
                                   %% replaces the error frame (11.8)
                                   {St, Pq} = frame_error(Code, Why, fabric_peer_flowctl:settle(
                                                                       Credited, fabric_peer_acks:handled(
                                                                                   Term, Pr#p{mode = legacy}))),
                                   Pm = Pq#p{mode = Pr#p.mode},
                                   {St, case St of
                                            close -> error_frame(too_many_errors, <<"too many errors">>, Pm);
                                            ok -> Pm
                                        end};
                               {error, Code, Why, Pe} ->
                                   frame_error(Code, Why, fabric_peer_flowctl:settle(
                                                            Credited, fabric_peer_acks:handled(Term, Pe)))
                           end,
            %% proxies started for this frame but in neither table after it (the frame was
            %% dropped half-way) stand for nothing: end them (a stand-in of an exit2 is
            %% buried, and ends by itself after delivering its signal)
            P3 = case P2#p.fresh of
                     [] -> P2;
                     Fresh ->
                         lists:foldl(fun(Pid, Acc) -> act({discard_proxy, Pid}, Acc) end,
                                     P2#p{fresh = []},
                                     [Pid || Pid <- lists:reverse(Fresh),
                                             fabric_peer_session:proxy_id(Pid, S) =:= error,
                                             fabric_peer_session:buried_proxy(Pid, S) =:= error])
                 end,
            {Acts, P4} = done(P3),
            {Status, Acts, P4};
        {error, {Code, Why}} when Code =:= bad_term; Code =:= limit; Code =:= bad_payload ->
            {Status, P1} = frame_error(Code, Why, fabric_peer_acks:handled(undecodable, P)),
            {Acts, P2} = done(P1),
            {Status, Acts, P2}
    end.

%% A frame's term. A raw pid, reference or port is never in a frame (4.1) but in a DEAD's
%% reason: one of an unknown node is refused before its node name becomes an atom; the node
%% of a `{Name, Node}' destination that is no atom here stays a binary (a client node of a
%% routing server). The new-atom budget is this connection's and what is left of the
%% server's; a frame with new atoms is rare, so the server's is read only for one (the
%% frame is decoded again with the whole budget).
decode(Bin, #p{o = O, atoms_left = Left} = P) ->
    Opts = #{atoms_left => 0, max_terms => maps:get(max_terms, O),
             max_decompressed => maps:get(max_frame, O),
             unknown_nodes => unknown_nodes(Bin), dest_node => binary},
    case fabric_peer_etf:decode(Bin, Opts) of
        {error, {limit, {new_atoms, _}}} when Left > 0 ->
            fabric_peer_etf:decode(Bin, Opts#{atoms_left := min(Left, server_atoms_left(P))});
        R -> R
    end.

%% The policy's screen of signals (`m' frames, the most, need none).
screen({m, _, _} = Frame, _) -> Frame;
screen(Frame, #p{o = O, s = S}) ->
    fabric_peer_policy:screen(Frame, fun(B) -> fabric_peer_session:exported(B, S) end, O).

%% The frames of `credit' and `acks' (`pass' for the others).
first_in(Term, P) ->
    case fabric_peer_flowctl:frame_in(Term, P) of
        pass -> fabric_peer_acks:frame_in(Term, P);
        R -> R
    end.

dispatch({m, Dest, Payload}, P) -> incoming_message(Dest, Payload, P);
dispatch({dead, Id, Reason}, #p{s = S} = P) ->
    case fabric_peer_session:proxy_of(Id, S) of
        {ok, Proxy} ->
            R = case {Reason, P#p.mode} of
                    {noproc, legacy} -> normal;
                    _ -> Reason
                end,
            {ok, end_proxy(Proxy, R, P)};
        error ->
            ?LOG_DEBUG(#{what => dead_for_unknown_id, peer => P#p.peer, id => Id}, ?FABRIC_LOG),
            {ok, P}
    end;
dispatch({r, Id}, P) when Id > 0 ->
    %% "create the proxy for the sender's process Id", even for an id that ended: the
    %% original does (vectors 36-39), and no peer of ours sends this frame
    case proxy_for(Id, P) of
        {ok, _, P1} -> {ok, P1};
        {error, Why, P1} -> {error, limit, Why, P1}
    end;
dispatch({r, _}, P) -> {error, unknown_frame, bad_id, P};
dispatch({whereis, Req, NameBin}, P) -> {ok, fabric_peer_names:whereis_in(Req, NameBin, P)};
dispatch({whereis_reply, Req, Result}, P) -> fabric_peer_names:reply_in(Req, Result, P);
dispatch({Kind, _, _} = F, P) when Kind =:= link; Kind =:= unlink ->
    fabric_peer_links:dispatch(F, P);
dispatch({Kind, _, _, _} = F, P) when Kind =:= exit2; Kind =:= link_exit ->
    fabric_peer_links:dispatch(F, P);
dispatch({route, Frame}, P) -> fabric_peer_route:dispatch(Frame, P);
dispatch({global, Frame}, P) -> fabric_peer_cluster_global:dispatch(Frame, P);
dispatch({heartbeat, N}, P) -> {ok, emit(ctrl, {heartbeat_ack, N}, P)};
dispatch({heartbeat_ack, _}, P) -> {ok, P};
dispatch({error, Code, Msg}, P) ->
    ?LOG_WARNING(#{what => peer_error, peer => P#p.peer, code => Code, message => Msg}, ?FABRIC_LOG),
    {ok, P};
dispatch({error, unknown_frame}, P) -> {error, unknown_frame, unknown_frame_shape, P};
dispatch({refused, Why}, P) -> {error, not_allowed, Why, P};
dispatch(_, P) -> {error, unknown_frame, bad_ids, P}.

incoming_message(Dest, Payload, P) ->
    case fabric_peer_names:resolve(Dest, P) of
        {ok, Target} ->
            case rewrite_in(Payload, P) of
                {ok, Msg, P1} ->
                    {Msg1, P2} = gen_call_in(Msg, P1),
                    {ok, deliver(Target, Dest, Msg1, P2)};
                {error, {Code, Why}, P1} -> fail(Code, Why, P, P1)
            end;
        drop -> {ok, P};
        {error, Code, Why} -> {error, Code, Why, P}
    end.

%% @doc An incoming message (an `m', or the message of an `mc'): delivered (a `deliver'
%% action is the newest), dropped silently (`{ok, P}' without one), or refused.
-spec incoming(term(), term(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
incoming(Dest, Payload, P) -> incoming_message(Dest, Payload, P).

%% a message is counted in `messages_in' when delivered (`messages_out': when written or
%% queued for writing, fabric_peer_commands); replays and frames dropped are not messages
deliver(Target, _, _, #p{env = #{self := Self}} = P) when Target =:= Self -> P;
deliver({route, Conn, Name}, Dest, Msg, P) when node(Conn) =:= node() ->
    %% to another client (16.3): with `credit', owed until that client's connection issued
    %% it on its hop (16.8), which tells us (`fabric_peer_flowctl:issued/2')
    act({route, {msg, Conn, Name, Msg, Dest}},
        count(messages_in, P#p{delivered = {route, Conn, Dest}}));
deliver({route, Conn, Name}, _, Msg, P) ->
    %% a client of another server of the cluster: handed to Erlang distribution, its credit
    %% is returned now (section 15)
    act({route, {msg, Conn, Name, Msg, none}}, count(messages_in, P));
deliver(Target, _, Msg, P) when is_pid(Target), node(Target) =:= node() ->
    %% (one update of the state for the three fields)
    P#p{delivered = Target, messages_in = P#p.messages_in + 1, acts = [{deliver, Target, Msg} | P#p.acts]};
deliver(Target, _, Msg, P) -> act({deliver, Target, Msg}, count(messages_in, P)).

%% gen_server/gen_statem calls from the peer (OTP 24+ callers). The caller's reply tag is
%% `[alias | Ref]' and `gen:reply/2' sends the reply to the alias `Ref' itself, which is a
%% reference of the peer's node: it would never cross the connection. So the call is
%% delivered with the plain tag `Ref' (the pre-alias form every gen behaviour still
%% accepts): the reply is then sent to the caller's proxy as `{Ref, Reply}', and
%% fabric_peer_commands (gen_reply_out) restores the tag the caller waits for. See README "gen_server:call".
gen_call_in({'$gen_call', {From, [alias | Ref]}, Req}, #p{s = S} = P)
  when is_pid(From), is_reference(Ref) ->
    case fabric_peer_session:proxy_id(From, S) of
        {ok, _} -> {{'$gen_call', {From, Ref}, Req}, P#p{s = fabric_peer_session:call_in(Ref, From, S)}};
        error -> {{'$gen_call', {From, [alias | Ref]}, Req}, P}
    end;
gen_call_in(Msg, P) -> {Msg, P}.

%% Section 9: count, log, tell an extended peer, close after too many.
frame_error(Code, Why, P) ->
    ?LOG_WARNING(#{what => frame_dropped, peer => P#p.peer, code => Code, reason => detail(Why)},
                 ?FABRIC_LOG),
    P1 = error_frame(Code, Why, count(errors, P)),
    N = P1#p.frames_in,
    case fabric_peer_frame:note_error(N, P1#p.window) of
        {ok, W} -> {ok, P1#p{window = W}};
        {close, W} ->
            ?LOG_WARNING(#{what => too_many_errors, peer => P#p.peer, then => close}, ?FABRIC_LOG),
            {close, error_frame(too_many_errors, <<"too many errors">>, P1#p{window = W})}
    end.

%% @doc A length header over the limit: the stream cannot be resynchronised; the caller
%% closes (after the error frame this writes to an extended peer).
-spec too_large(non_neg_integer(), proto()) -> result().
too_large(Len, P) ->
    Why = iolist_to_binary(io_lib:format("frame length ~b over the limit", [Len])),
    done(error_frame(frame_too_large, Why, count(errors, P))).

error_frame(Code, Why, #p{mode = extended, feats = #{<<"error">> := true}} = P) ->
    act({write, fabric_peer_frame:encode_plain(fabric_peer_frame:error_frame(Code, detail(Why)))}, P);
error_frame(_, _, P) -> P.

detail(B) when is_binary(B) -> B;
detail(T) -> iolist_to_binary(io_lib:format("~0P", [T, 10])).

%%% local commands (fabric_peer_commands)

%% @doc `fabric_peer:send/2' through this connection: to a proxy pid, a name or
%% `{Name, Node}' (`fabric_peer_commands:send/3').
-spec send(term(), term(), proto()) -> {ok | {error, term()}, [action()], proto()}.
send(Dest, Msg, P) -> fabric_peer_commands:send(Dest, Msg, P).

%% @doc `send/3' for caller `From': with `acks' it may wait (`fabric_peer_commands:send/4').
-spec send(term(), term(), gen_statem:from() | none | {relay, gen_statem:from() | none}, proto()) ->
          {ok | wait | {error, term()}, [action()], proto()}.
send(Dest, Msg, From, P) -> fabric_peer_commands:send(Dest, Msg, From, P).

%% @doc A confirmed send for caller `From' (`fabric_peer_commands:send_confirmed/4').
-spec send_confirmed(term(), term(), gen_statem:from(), proto()) ->
          {wait | {error, term()}, [action()], proto()}.
send_confirmed(Dest, Msg, From, P) -> fabric_peer_commands:send_confirmed(Dest, Msg, From, P).

%% @doc A message sent to proxy `Proxy' (`Proxy ! Msg'): errors are logged and counted.
-spec proxy_msg(pid(), term(), proto()) -> result().
proxy_msg(Proxy, Msg, P) -> done(fabric_peer_commands:proxy_msg(Proxy, Msg, P)).

%% @doc Proxy `Proxy' received an exit signal from local process `From' that the peer
%% must see (an `exit2' frame, with the `link' feature).
-spec proxy_exit(pid(), pid(), term(), proto()) -> result().
proxy_exit(Proxy, From, Reason, P) -> done(fabric_peer_commands:proxy_exit(Proxy, From, Reason, P)).

%% @doc A monitor fired: an exported process ended (its DEAD is written) or a proxy did.
%% An exported process's DEAD may first wait for its last messages (fabric_peer_dead_order).
-spec down(reference(), pid(), term(), proto()) -> result().
down(Ref, Pid, Reason, #p{s = S} = P0) ->
    case fabric_peer_session:export_down(Ref, Pid, Reason, S) of
        {dead, Dead, S1} -> done(fabric_peer_dead_order:died(Dead, P0#p{s = S1}));
        error ->
            P = fabric_peer_dead_order:proxy_gone(Pid, fabric_peer_issue:proxy_gone(Pid, P0)),
            case fabric_peer_session:proxy_down(Ref, Pid, S) of
                {killed_live, Id, S1} ->
                    %% not ended by a DEAD: killed locally (exit(Proxy, kill))
                    done(fabric_peer_links:proxy_killed(Pid, Id, Reason, P#p{s = S1}));
                {ok, S1} -> done(P#p{s = S1});
                error -> done(P)
            end
    end.

%% @doc Proxy `Proxy' answered barrier `N' (fabric_peer_dead_order): DEADs may be written.
-spec barrier_passed(pid(), pos_integer(), proto()) -> result().
barrier_passed(Proxy, N, P) -> done(fabric_peer_dead_order:passed(Proxy, N, P)).

%% @doc `fabric_peer:whereis/3' in the established state, name already a binary.
-spec whereis(binary(), gen_statem:from(), proto()) -> result().
whereis(NameBin, From, P) -> done(fabric_peer_names:whereis(NameBin, From, P)).

%% @doc Our heartbeat is due.
-spec heartbeat(proto()) -> result().
heartbeat(#p{hb_n = N} = P) -> done(emit(ctrl, {heartbeat, N}, P#p{hb_n = N + 1})).

%%% acks (fabric_peer_acks)

%% @doc The ack delay passed: write the ack owed, if any.
-spec ack_due(proto()) -> result().
ack_due(P) -> done(fabric_peer_acks:ack_due(P)).

%% @doc `send/4' callers waiting since before `Now - send_timeout' get `{error, timeout}'.
-spec expire(integer(), proto()) -> result().
expire(Now, P) -> done(fabric_peer_issue:expire(Now, P)).

%% @doc The grant delay passed (`credit'): owed mailboxes checked again, returns granted.
-spec grant_due(proto()) -> result().
grant_due(P) -> done(fabric_peer_flowctl:grant_due(P)).

%% @doc `send/2' to proxy `Proxy' of caller `From', forwarded by the proxy.
-spec proxy_send(pid(), gen_statem:from(), term(), integer(), proto()) -> result().
proxy_send(Proxy, From, Msg, Deadline, P) ->
    done(fabric_peer_commands:proxy_send(Proxy, From, Msg, Deadline, P)).

%% @doc A message of `!' the proxy dropped (max_pending_messages reached, 12.6).
-spec proxy_dropped(pid(), term(), proto()) -> result().
proxy_dropped(Proxy, Msg, P) -> done(fabric_peer_issue:dropped(Proxy, Msg, P)).

%% @doc The allowance to give back to proxies (control actions), and whether the overflow
%% may have ended; plus the commands waiting in the connection.
-spec allowances(proto()) -> {[action()], non_neg_integer(), proto()}.
allowances(#p{pq = PQ} = P) ->
    {Acts, P1} = fabric_peer_issue:take_allowances(P),
    {Acts, fabric_peer_pending:len(PQ), P1}.

%% @doc True with `credit' (a delivery is then never held back by the connection).
-spec credit_on(proto()) -> boolean().
credit_on(P) -> fabric_peer_flowctl:on(P).

%% @doc `close' caller `From' is answered once nothing waits for an ack.
-spec flush(gen_statem:from(), proto()) -> result().
flush(From, P) -> done(fabric_peer_acks:flush(From, P)).

%% @doc Server: may this session be resumed by a connection agreeing on `Feats' whose
%% client handled `PeerCount' of our frames? (`fabric_peer_acks:resumable/3')
-spec resumable([binary()], term(), proto()) -> {ok, non_neg_integer() | undefined} | not_resumable.
resumable(Feats, PeerCount, P) -> fabric_peer_acks:resumable(Feats, PeerCount, P).

%% @doc Client: is the server's count of a resumed session in range?
-spec resume_ok(map(), proto()) -> boolean().
resume_ok(Params, P) -> fabric_peer_acks:resume_ok(Params, P).

%% @doc Sequenced frames handled from the peer in this session (`undefined' without `acks').
-spec received(proto()) -> non_neg_integer() | undefined.
received(#p{seq = Seq0}) ->
    case Seq0 of
        undefined -> undefined;
        Seq -> fabric_peer_seq:received(Seq)
    end.

%% @doc Why the session will have ended when the connection terminates (11.7).
-spec set_end_reason(atom(), proto()) -> proto().
set_end_reason(Why, P) -> P#p{end_reason = Why}.

%% @doc Why the session ends (as `set_end_reason/2' left it).
-spec end_reason(proto()) -> atom().
end_reason(#p{end_reason = Why}) -> Why.

%%% accessors

%% @doc `legacy', `extended' or `undefined' before the first handshake.
-spec mode(proto()) -> legacy | extended | undefined.
mode(#p{mode = M}) -> M.

%% @doc The features agreed with the peer.
-spec features(proto()) -> #{binary() => true}.
features(#p{feats = F}) -> F.

%% @doc True while frames are written (not kept in the outbox).
-spec connected(proto()) -> boolean().
connected(#p{connected = C}) -> C.

%% @doc The protocol's part of `fabric_peer:info/1'.
-spec info(proto()) -> map().
info(#p{stats = St, s = S, mode = Mode, feats = F, atoms_left = A} = P) ->
    (maps:merge(maps:merge(St, fabric_peer_acks:info(P)), fabric_peer_flowctl:info(P)))#{
        mode => case Mode of undefined -> none; M -> M end,
        frames_in => P#p.frames_in, frames_out => P#p.frames_out,
        messages_in => P#p.messages_in, messages_out => P#p.messages_out,
        features => lists:sort(maps:keys(F)),
        proxies => fabric_peer_session:proxy_count(S),
        exported => fabric_peer_session:export_count(S),
        next_id => fabric_peer_session:next_id(S),
        queued => fabric_peer_session:outbox_len(S),
        atoms_left => A}.

done(#p{acts = []} = P) -> {[], P};
done(#p{acts = As} = P) -> {lists:reverse(As), P#p{acts = []}}.
