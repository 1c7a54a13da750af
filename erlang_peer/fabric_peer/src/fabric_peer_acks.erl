%% @doc The `acks' feature inside the established protocol (docs/protocol.md 11), without
%% I/O: sequencing of what is written, counting and acknowledging what is handled, the
%% replay on resume, the user commands that wait for outbox room (12.6), and the report of
%% the messages a session could not vouch for when it ends (11.7). The counts and the
%% outbox are `fabric_peer_seq', inside the session; this module works on the protocol
%% state of `fabric_peer_protocol' and adds to its actions:
%% <ul>
%% <li>`{ack_timer, Ms}': call `fabric_peer_protocol:ack_due/1' after `Ms';</li>
%% <li>`{send_timer, Ms}': call `fabric_peer_protocol:expire/2' after `Ms';</li>
%% <li>`{undelivered, Reason, [Item]}': report messages (README, "Acknowledgements").</li>
%% </ul>
-module(fabric_peer_acks).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_protocol.hrl").

-export([agreed/1, on/1, start/1, emit/5, admit/3, handled/2, frame_in/2, ack_in/2, ack_due/1, result_in/3,
         resumable/3, resume_ok/2, resume/2, end_session/2, expire/2, flush/2, info/1]).

-import(fabric_peer_payload, [act/2]).

%% Dropped messages of `!' are reported in batches of this many.
-define(OVERFLOW_BATCH, 1000).

%% @doc True when the features agreed make a session with `acks'.
-spec agreed(#{binary() => true} | [binary()]) -> boolean().
agreed(L) when is_list(L) -> agreed(maps:from_keys(L, true));
agreed(F) -> is_map_key(<<"acks">>, F) andalso is_map_key(<<"session">>, F).

%% @doc True when this connection's session has `acks'.
-spec on(#p{}) -> boolean().
on(#p{s = S}) -> fabric_peer_session:seq(S) =/= undefined.

%% @doc A new session: with `acks' agreed it starts counting from 0.
-spec start(#p{}) -> #p{}.
start(#p{feats = F, s = S, o = O} = P) ->
    case agreed(F) of
        true ->
            Seq = fabric_peer_seq:new(maps:get(outbox_frames, O), maps:get(outbox_bytes, O)),
            P#p{s = fabric_peer_session:set_seq(Seq, S)};
        false -> P#p{s = fabric_peer_session:set_seq(undefined, S)}
    end.

%% @doc Write (or keep, while disconnected) the encoded frame `Bin' of `Term'. A sequenced
%% frame gets its number and enters the outbox, where it stays until acknowledged;
%% `Info' tells the report what it carried. The option `max_queue => 0' still refuses
%% messages while disconnected (section 7).
-spec emit(msg | ctrl, term(), binary(), fabric_peer_seq:info(), #p{}) ->
          {ok | {error, not_connected}, #p{}}.
emit(Kind, Term, Bin, Info, #p{s = S, connected = Conn, o = O} = P) ->
    case {fabric_peer_seq:sequenced(Term), Conn} of
        {false, true} -> {ok, act({send, Kind, Bin}, P)};
        {false, false} -> {{error, not_connected}, P};
        {true, false} when Kind =:= msg, map_get(max_queue, O) =:= 0 -> {{error, not_connected}, P};
        {true, _} ->
            Seq = fabric_peer_seq:issue(Bin, Info, fabric_peer_session:seq(S)),
            P1 = P#p{s = fabric_peer_session:set_seq(Seq, S)},
            case Conn of
                true -> {ok, act({send, Kind, Bin}, P1)};
                false -> {ok, P1}
            end
    end.

%% @doc May user command `Cmd' (`{send, From, UserDest, Msg}', `{proxy, Proxy, Msg}' or
%% `{exit, Proxy, From, Reason}') be carried out now? Not while earlier ones wait (issue
%% order) or the outbox is full: then it waits (`queued'), or with `max_pending_messages' reached
%% it is refused (`send') or dropped, counted, logged and reported (`!', 12.6).
-spec admit(tuple(), integer(), #p{}) -> {now | queued | {error, overflow}, #p{}}.
admit(Cmd, Now, #p{pending = Q} = P) ->
    case queue:is_empty(Q) andalso room(Cmd, P) of
        true -> {now, P};
        false -> enqueue(Cmd, Now, P)
    end.

%% Outbox room, and for a confirmed send fewer than `max_confirms' pending (11.8).
room(Cmd, #p{s = S, o = O}) ->
    Seq = fabric_peer_session:seq(S),
    fabric_peer_seq:room(Seq) andalso
        (element(1, Cmd) =/= confirm orelse fabric_peer_seq:confirms(Seq) < maps:get(max_confirms, O)).

enqueue(Cmd, _, #p{npending = N, o = #{max_pending_messages := Max}} = P) when N >= Max ->
    case Cmd of
        {send, _, _, _} -> {{error, overflow}, P};
        {confirm, _, _, _} -> {{error, overflow}, P};
        {proxy, Proxy, Msg} -> {queued, dropped(Proxy, Msg, P)};
        {exit, _, _, _} ->
            ?LOG_WARNING("fabric: exit signal to a proxy of ~s dropped: max_pending_messages reached",
                         [P#p.peer]),
            {queued, fabric_peer_protocol:count(dropped_overflow, P)}
    end;
enqueue(Cmd, Now, #p{pending = Q, npending = N, o = O} = P0) ->
    P = overflow_ended(P0),
    case Cmd of
        {Blocking, _, _, _} when Blocking =:= send; Blocking =:= confirm ->
            T = maps:get(send_timeout, O),
            {queued, act({send_timer, T}, P#p{pending = queue:in({Cmd, Now + T}, Q),
                                             npending = N + 1, nsenders = P#p.nsenders + 1})};
        _ -> {queued, P#p{pending = queue:in({Cmd, none}, Q), npending = N + 1}}
    end.

dropped(Proxy, Msg, #p{overflow = N, overflow_batch = B} = P) ->
    N =:= 0 andalso ?LOG_WARNING("fabric: messages to proxies of ~s dropped: ~b are waiting "
                                 "for outbox room (max_pending_messages); they are counted "
                                 "(dropped_overflow) and reported", [P#p.peer, P#p.npending]),
    P1 = fabric_peer_protocol:count(dropped_overflow, P),
    B1 = [item(Proxy, Msg, unsent) | B],
    case (N + 1) rem ?OVERFLOW_BATCH =:= 0 of
        true -> act({undelivered, overflow, lists:reverse(B1)}, P1#p{overflow = N + 1, overflow_batch = []});
        false -> P1#p{overflow = N + 1, overflow_batch = B1}
    end.

overflow_ended(#p{overflow = 0} = P) -> P;
overflow_ended(#p{overflow = N, overflow_batch = B} = P) ->
    ?LOG_WARNING("fabric: ~b messages to proxies of ~s were dropped (max_pending_messages)", [N, P#p.peer]),
    P1 = P#p{overflow = 0, overflow_batch = []},
    case B of
        [] -> P1;
        _ -> act({undelivered, overflow, lists:reverse(B)}, P1)
    end.

item(Dest, Msg, State) -> #{dest => Dest, msg => Msg, confirmed => false, state => State}.

%% Carry out the waiting commands while the outbox has room, oldest first.
drain(#p{pending = Q} = P) ->
    case queue:peek(Q) of
        empty -> flushed(overflow_ended(P));
        {value, {Cmd, _}} ->
            case room(Cmd, P) of
                false -> P;
                true -> drain_one(Cmd, P)
            end
    end.

drain_one(Cmd, #p{pending = Q, nsenders = NS} = P) ->
    NS1 = case element(1, Cmd) of
              K when K =:= send; K =:= confirm -> NS - 1;
              _ -> NS
          end,
    drain(fabric_peer_commands:run_pending(Cmd, P#p{pending = queue:drop(Q), nsenders = NS1,
                                                    npending = P#p.npending - 1})).

%% `close' callers wait until nothing is unacknowledged or waiting; the ack we owe goes
%% out before they are answered, so the peer has nothing of ours to report unconfirmed.
flushed(#p{flushers = []} = P) -> P;
flushed(#p{flushers = Fs, s = S, npending = 0} = P) ->
    case fabric_peer_seq:outbox_len(fabric_peer_session:seq(S)) of
        0 -> lists:foldl(fun(F, Acc) -> act({reply, F, ok}, Acc) end, ack_due(P#p{flushers = []}), Fs);
        _ -> P
    end;
flushed(P) -> P.

%% @doc A `close' caller: answered `ok' once everything written was acknowledged (at once
%% without `acks' or when not connected).
-spec flush(gen_statem:from(), #p{}) -> #p{}.
flush(From, #p{connected = true} = P) ->
    case on(P) of
        true -> flushed(P#p{flushers = [From | P#p.flushers]});
        false -> act({reply, From, ok}, P)
    end;
flush(From, P) -> act({reply, From, ok}, P).

%% @doc A frame of the peer was handled (`Term' decoded, or `undecodable'): a sequenced
%% one is counted, and an ack is written after `ack_every' of them, or `ack_delay' after
%% the first not acknowledged.
-spec handled(term(), #p{}) -> #p{}.
handled(Term, #p{s = S, o = O} = P) ->
    case on(P) andalso fabric_peer_seq:sequenced(Term) of
        false -> P;
        true ->
            Seq = fabric_peer_seq:handled(fabric_peer_session:seq(S)),
            P1 = P#p{s = fabric_peer_session:set_seq(Seq, S)},
            case fabric_peer_seq:ack_owed(Seq) of
                N when N >= map_get(ack_every, O) -> write_ack(P1);
                1 -> act({ack_timer, maps:get(ack_delay, O)}, P1);
                _ -> P1
            end
    end.

%% @doc The ack delay passed: write the ack owed, if any.
-spec ack_due(#p{}) -> #p{}.
ack_due(#p{s = S} = P) ->
    case on(P) andalso fabric_peer_seq:ack_owed(fabric_peer_session:seq(S)) > 0 of
        true -> write_ack(P);
        false -> P
    end.

write_ack(#p{connected = false} = P) -> P;
write_ack(#p{s = S} = P) ->
    {N, Seq} = fabric_peer_seq:ack_written(fabric_peer_session:seq(S)),
    act({send, ctrl, fabric_peer_frame:encode_plain({ack, N})},
        P#p{s = fabric_peer_session:set_seq(Seq, S)}).

%% @doc A decoded frame, with `acks': the peer's `ack', `mc' and `mc_result' (11.8), the
%% `not_resumable' error that ends the session (11.6); `pass' for every other frame (and
%% for these without `acks'), which the protocol dispatches as usual.
-spec frame_in(term(), #p{}) -> pass | {ok | close, #p{}} | {error | refused, atom(), term(), #p{}}.
frame_in({ack, N}, P) ->
    case fabric_peer_acks:on(P) of
        true -> fabric_peer_acks:ack_in(N, P);
        false -> pass
    end;
frame_in({error, <<"not_resumable">>, _}, P) ->
    case fabric_peer_acks:on(P) of
        true ->
            ?LOG_WARNING("fabric: ~s cannot resume the session losslessly: it ends", [P#p.peer]),
            {close, P#p{end_reason = not_resumable}};
        false -> pass
    end;
frame_in({mc, Ref, Dest, Payload}, P) when is_integer(Ref), Ref > 0,
                                              (is_integer(Dest) orelse is_atom(Dest)
                                               orelse (tuple_size(Dest) =:= 2 andalso
                                                       is_atom(element(1, Dest)) andalso
                                                       is_atom(element(2, Dest)))) ->
    case fabric_peer_acks:on(P) of
        true -> confirmed_message(Ref, Dest, Payload, P);
        false -> {error, unknown_frame, unknown_frame_shape, P}
    end;
frame_in({mc_result, Ref, Result}, P) ->
    case fabric_peer_acks:on(P) of
        true -> fabric_peer_acks:result_in(Ref, Result, P);
        false -> {error, unknown_frame, unknown_frame_shape, P}
    end;
frame_in(Term, P) when element(1, Term) =:= mc -> {error, unknown_frame, Term, P};
frame_in(_, _) -> pass.

%% `{mc, Ref, Dest, Payload}': delivered as `m' would be, and answered (11.8).
confirmed_message(Ref, Dest, Payload, P) ->
    Answer = fun(R, Px) -> fabric_peer_commands:emit(ctrl, {mc_result, Ref, R}, Px) end,
    case fabric_peer_protocol:incoming(Dest, Payload, P) of
        {ok, #p{acts = [{deliver, _, _} | _]} = P1} -> {ok, Answer(ok, P1)};
        {ok, P1} -> {ok, Answer({error, <<"noproc">>}, P1)};
        {error, Code, Why, P1} -> {refused, Code, Why, Answer({error, atom_to_binary(Code)}, P1)}
    end.

%% @doc `{ack, N}' from the peer: frames up to `N' leave the outbox, waiting commands go.
-spec ack_in(term(), #p{}) -> {ok, #p{}} | {error, bad_ack, term(), #p{}}.
ack_in(N, #p{s = S} = P) ->
    case fabric_peer_seq:ack(N, fabric_peer_session:seq(S)) of
        {ok, Seq} -> {ok, drain(P#p{s = fabric_peer_session:set_seq(Seq, S)})};
        {error, bad_ack} -> {error, bad_ack, {ack, N}, P}
    end.

%% @doc Server: may a connection agreeing on `Feats' resume this session, the client
%% having handled `PeerCount' of our frames (11.1, 11.5)? `{ok, Received}' (our count, for
%% the handshake; `undefined' without `acks'), or `not_resumable'.
-spec resumable([binary()], term(), #p{}) -> {ok, non_neg_integer() | undefined} | not_resumable.
resumable(Feats, PeerCount, #p{s = S}) ->
    case {agreed(Feats), fabric_peer_session:seq(S)} of
        {false, undefined} -> {ok, undefined};
        {true, Seq} when Seq =/= undefined ->
            case fabric_peer_seq:check_peer(PeerCount, Seq) of
                true -> {ok, fabric_peer_seq:received(Seq)};
                false -> not_resumable
            end;
        _ -> not_resumable
    end.

%% @doc Client: the session resumed with the server's count `PeerCount'; true when it is
%% in range (11.5 step 3) and the features still match.
-spec resume_ok(map(), #p{}) -> boolean().
resume_ok(Params, #p{s = S}) ->
    case {agreed(maps:get(features, Params, [])), fabric_peer_session:seq(S)} of
        {false, undefined} -> true;
        {true, Seq} when Seq =/= undefined ->
            fabric_peer_seq:check_peer(maps:get(peer_received, Params, undefined), Seq);
        _ -> false
    end.

%% @doc The session resumed and the peer handled `PeerCount' of our frames: they leave
%% the outbox, the rest is written again in order, then the waiting commands go.
-spec resume(non_neg_integer(), #p{}) -> #p{}.
resume(PeerCount, #p{s = S} = P) ->
    {Bins, Seq} = fabric_peer_seq:resume(PeerCount, fabric_peer_session:seq(S)),
    P1 = lists:foldl(fun(Bin, Acc) -> act({send, ctrl, Bin}, Acc) end,
                     P#p{s = fabric_peer_session:set_seq(Seq, S)}, Bins),
    drain(P1).

%% @doc The session ends with `Reason': the messages written and not acknowledged
%% (`unconfirmed'), those waiting (`unsent') and the dropped ones not yet reported are
%% reported (and, first, the messages of `!' dropped and not reported yet, with reason
%% `overflow'); waiting `send/2' callers get `{error, Reason}'.
-spec end_session(atom(), #p{}) -> #p{}.
end_session(Reason, #p{s = S, pending = Q} = P) ->
    Sent = case fabric_peer_session:seq(S) of
               undefined -> [];
               Seq -> [(item(D, M, unconfirmed))#{confirmed := C}
                    || {D, M, C} <- fabric_peer_seq:unconfirmed(Seq)]
           end,
    P0 = fail_confirms(Reason, P),
    {Unsent, P1} = lists:foldl(fun({{send, From, D, M}, _}, {L, Acc}) ->
                                       {[item(D, M, unsent) | L], reply(From, {error, Reason}, Acc)};
                                  ({{confirm, From, D, M}, _}, {L, Acc}) ->
                                       {[(item(D, M, unsent))#{confirmed := true} | L],
                                        reply(From, {error, Reason}, Acc)};
                                  ({{proxy, Proxy, M}, _}, {L, Acc}) -> {[item(Proxy, M, unsent) | L], Acc};
                                  (_, Acc) -> Acc
                               end, {[], P0}, queue:to_list(Q)),
    Items = Sent ++ lists:reverse(Unsent),
    %% the dropped messages not reported yet go in their own report (reason overflow)
    P2 = lists:foldl(fun(F, Acc) -> act({reply, F, ok}, Acc) end,
                     overflow_ended(P1#p{pending = queue:new(), npending = 0}), P#p.flushers),
    P3 = P2#p{pending = queue:new(), npending = 0, nsenders = 0, overflow = 0,
              overflow_batch = [], flushers = [], s = fabric_peer_session:set_seq(undefined, S)},
    case Items of
        [] -> P3;
        _ -> act({undelivered, Reason, Items}, P3)
    end.

reply(none, _, P) -> P;
reply(From, R, P) -> act({reply, From, R}, P).

%% Waiting confirmed sends fail with the reason the session ended (11.7).
fail_confirms(Reason, #p{s = S} = P) ->
    case fabric_peer_session:seq(S) of
        undefined -> P;
        Seq ->
            {Froms, Seq1} = fabric_peer_seq:take_confirms(Seq),
            lists:foldl(fun(F, Acc) -> reply(F, {error, Reason}, Acc) end,
                        P#p{s = fabric_peer_session:set_seq(Seq1, S)}, Froms)
    end.

%% @doc `{mc_result, Ref, Result}' (11.8): the pending confirmed send `Ref' completes with
%% `ok' or `{error, Code}'; a `Ref' not pending or a bad result is `unknown_frame'.
-spec result_in(term(), term(), #p{}) -> {ok, #p{}} | {error, unknown_frame, term(), #p{}}.
result_in(Ref, Result, #p{s = S} = P) ->
    Reply = case Result of
                ok -> ok;
                {error, Code} when is_binary(Code) -> {error, code(Code)};
                _ -> bad
            end,
    case Reply =/= bad andalso fabric_peer_seq:confirmed(Ref, fabric_peer_session:seq(S)) of
        {ok, From, Seq} -> {ok, drain(reply(From, Reply, P#p{s = fabric_peer_session:set_seq(Seq, S)}))};
        _ -> {error, unknown_frame, {mc_result, Ref, Result}, P}
    end.

%% The codes of 11.8 as atoms (a code we do not know stays a binary).
code(B) ->
    Known = [noproc, not_allowed, unknown_id, bad_payload, limit, credit_exceeded],
    case [A || A <- Known, atom_to_binary(A) =:= B] of
        [A] -> A;
        [] -> B
    end.

%% @doc `send/2' callers waiting since before `Now - send_timeout' get `{error, timeout}'
%% (nothing is sent).
-spec expire(integer(), #p{}) -> #p{}.
expire(_, #p{nsenders = 0} = P) -> P;
expire(Now, #p{pending = Q} = P) ->
    {Keep, Gone} = lists:partition(fun({{K, _, _, _}, Deadline}) when K =:= send; K =:= confirm ->
                                           Deadline > Now;
                                      (_) -> true
                                   end, queue:to_list(Q)),
    P1 = P#p{pending = queue:from_list(Keep), npending = length(Keep),
             nsenders = P#p.nsenders - length(Gone)},
    lists:foldl(fun({{_, From, _, _}, _}, Acc) -> reply(From, {error, timeout}, Acc) end, P1, Gone).

%% @doc The `acks' part of `info/1'.
-spec info(#p{}) -> map().
info(#p{s = S, npending = N} = P) ->
    case fabric_peer_session:seq(S) of
        undefined -> #{};
        Seq -> #{sent => fabric_peer_seq:sent(Seq), acked => fabric_peer_seq:acked(Seq),
                 received => fabric_peer_seq:received(Seq),
                 outbox => fabric_peer_seq:outbox_len(Seq),
                 outbox_bytes => fabric_peer_seq:outbox_bytes(Seq), pending => N,
                 dropped_overflow => maps:get(dropped_overflow, P#p.stats, 0)}
    end.
