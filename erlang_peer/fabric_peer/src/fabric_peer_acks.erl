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
-include("fabric_peer_log.hrl").
-include("fabric_peer_protocol.hrl").

-export([agreed/1, on/1, start/2, emit/5, emit/6, handled/2, frame_in/2, ack_in/2, ack_due/1, result_in/3,
         resumable/3, resume_ok/2, resume/2, end_session/2, flush/2, info/1]).

-import(fabric_peer_payload, [act/2]).

%% @doc True when the features agreed make a session with `acks'.
-spec agreed(#{binary() => true} | [binary()]) -> boolean().
agreed(L) when is_list(L) -> agreed(maps:from_keys(L, true));
agreed(F) -> is_map_key(<<"acks">>, F) andalso is_map_key(<<"session">>, F).

%% @doc True when this connection's session has `acks'.
-spec on(#p{}) -> boolean().
on(#p{seq = Seq}) -> Seq =/= undefined.

%% @doc A new session: with `acks' agreed it starts counting from 0; with `credit' too,
%% its windows are ours and the peer's of this handshake (`peer_credit' in `Params'),
%% fixed for the session (12.1).
-spec start(map(), #p{}) -> #p{}.
start(Params, #p{feats = F, o = O} = P) ->
    case agreed(F) of
        true ->
            Seq = fabric_peer_seq:new(maps:get(outbox_frames, O), maps:get(outbox_bytes, O)),
            Credit = case is_map_key(<<"credit">>, F) of
                         true -> fabric_peer_credit:new(fabric_peer_flowctl:windows(O),
                                                        maps:get(peer_credit, Params, fabric_peer_flowctl:windows(O)));
                         false -> undefined
                     end,
            P#p{seq = Seq, credit = Credit};
        false -> P#p{seq = undefined, credit = undefined}
    end.

%% @doc Write (or keep, while disconnected) the encoded frame `Bin' of `Term'. A sequenced
%% frame gets its number and enters the outbox, where it stays until acknowledged;
%% `Info' tells the report what it carried. The option `max_queue => 0' still refuses
%% messages while disconnected (section 7).
-spec emit(msg | ctrl, term(), binary(), fabric_peer_seq:info(), #p{}) ->
          {ok | {error, not_connected}, #p{}}.
emit(Kind, Term, Bin, Info, #p{credit = C} = P) -> emit(Kind, Term, Bin, Info, C, P).

%% @doc `emit/5' with the credit state the frame leaves (`fabric_peer_commands': the credit
%% it took), set in the same update of the state as the sequence (issue 15).
-spec emit(msg | ctrl, term(), binary(), fabric_peer_seq:info(), fabric_peer_credit:credit() | undefined, #p{}) ->
          {ok | {error, not_connected}, #p{}}.
emit(Kind, Term, Bin, Info, C, #p{seq = Seq0, connected = Conn, o = O, acts = As} = P) ->
    case {fabric_peer_seq:sequenced(Term), Conn} of
        {false, true} -> {ok, P#p{credit = C, acts = [{send, Kind, Bin} | As]}};
        {false, false} -> {{error, not_connected}, P};
        {true, false} when Kind =:= msg, map_get(max_queue, O) =:= 0 -> {{error, not_connected}, P};
        {true, true} ->
            {ok, P#p{seq = fabric_peer_seq:issue(Bin, Info, Seq0), credit = C, acts = [{send, Kind, Bin} | As]}};
        {true, false} -> {ok, P#p{seq = fabric_peer_seq:issue(Bin, Info, Seq0), credit = C}}
    end.

%% @doc A `close' caller: answered `ok' once everything written was acknowledged (at once
%% without `acks' or when not connected).
-spec flush(gen_statem:from(), #p{}) -> #p{}.
flush(From, #p{connected = true} = P) ->
    case on(P) of
        true -> fabric_peer_issue:flushed(P#p{flushers = [From | P#p.flushers]});
        false -> act({reply, From, ok}, P)
    end;
flush(From, P) -> act({reply, From, ok}, P).

%% @doc A frame of the peer was handled (`Term' decoded, or `undecodable'): a sequenced
%% one is counted, and an ack is written after `ack_every' of them, or `ack_delay' after
%% the first not acknowledged.
-spec handled(term(), #p{}) -> #p{}.
handled(Term, #p{seq = Seq0, o = O} = P) ->
    case on(P) andalso fabric_peer_seq:sequenced(Term) of
        false -> P;
        true ->
            Seq = fabric_peer_seq:handled(Seq0),
            P1 = P#p{seq = Seq},
            case fabric_peer_seq:ack_owed(Seq) of
                N when N >= map_get(ack_every, O) -> write_ack(P1);
                1 -> act({ack_timer, maps:get(ack_delay, O)}, P1);
                _ -> P1
            end
    end.

%% @doc The ack delay passed: write the ack owed, if any.
-spec ack_due(#p{}) -> #p{}.
ack_due(#p{seq = Seq} = P) ->
    case Seq =/= undefined andalso fabric_peer_seq:ack_owed(Seq) > 0 of
        true -> write_ack(P);
        false -> P
    end.

write_ack(#p{connected = false} = P) -> P;
write_ack(#p{seq = Seq0} = P) ->
    {N, Seq} = fabric_peer_seq:ack_written(Seq0),
    act({send, ctrl, fabric_peer_frame:encode_plain({ack, N})},
        P#p{seq = Seq}).

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
            ?LOG_WARNING(#{what => session_not_resumable, peer => P#p.peer, then => close,
                           text => "the peer cannot resume the session losslessly: it ends"},
                         ?FABRIC_LOG),
            {close, P#p{end_reason = not_resumable}};
        false -> pass
    end;
frame_in({mc, Ref, Dest, Payload}, P) when is_integer(Ref), Ref > 0,
                                              (is_integer(Dest) orelse is_atom(Dest)
                                               orelse (tuple_size(Dest) =:= 2 andalso
                                                       is_atom(element(1, Dest)) andalso
                                                       (is_atom(element(2, Dest)) orelse
                                                        is_binary(element(2, Dest))))) ->
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
        %% routed to another client (16.8): answered with that client's result
        {ok, #p{acts = [{route, {msg, C, N, M, _}} | As]} = P1} ->
            %% its credit is returned at once (the end-to-end result bounds it)
            {ok, P1#p{acts = [{route, {mc, C, N, M, Ref}} | As], delivered = none}};
        {ok, P1} -> {ok, Answer({error, <<"noproc">>}, P1)};
        {error, Code, Why, P1} -> {refused, Code, Why, Answer({error, atom_to_binary(Code)}, P1)}
    end.

%% @doc `{ack, N}' from the peer: frames up to `N' leave the outbox, waiting commands go.
-spec ack_in(term(), #p{}) -> {ok, #p{}} | {error, bad_ack, term(), #p{}}.
ack_in(N, #p{seq = Seq0} = P) ->
    case fabric_peer_seq:ack(N, Seq0) of
        {ok, Seq} -> {ok, fabric_peer_issue:drain(P#p{seq = Seq})};
        {error, bad_ack} -> {error, bad_ack, {ack, N}, P}
    end.

%% @doc Server: may a connection agreeing on `Feats' resume this session, the client
%% having handled `PeerCount' of our frames (11.1, 11.5)? `{ok, Received}' (our count, for
%% the handshake; `undefined' without `acks'), or `not_resumable'.
-spec resumable([binary()], term(), #p{}) -> {ok, non_neg_integer() | undefined} | not_resumable.
resumable(Feats, PeerCount, #p{seq = Seq0} = P) ->
    case {agreed(Feats), Seq0, same_credit(Feats, P)} of
        {_, _, false} -> not_resumable;
        {false, undefined, _} -> {ok, undefined};
        {true, Seq, _} when Seq =/= undefined ->
            case fabric_peer_seq:check_peer(PeerCount, Seq) of
                true -> {ok, fabric_peer_seq:received(Seq)};
                false -> not_resumable
            end;
        _ -> not_resumable
    end.

%% A session is resumed only with the same `credit' agreement (11.1).
same_credit(Feats, #p{credit = C}) ->
    lists:member(<<"credit">>, Feats) =:= (C =/= undefined).

%% @doc Client: the session resumed with the server's count `PeerCount'; true when it is
%% in range (11.5 step 3) and the features still match.
-spec resume_ok(map(), #p{}) -> boolean().
resume_ok(Params, #p{seq = Seq0} = P) ->
    Feats = maps:get(features, Params, []),
    case {agreed(Feats) andalso same_credit(Feats, P), Seq0} of
        {false, undefined} -> true;
        {true, Seq} when Seq =/= undefined ->
            fabric_peer_seq:check_peer(maps:get(peer_received, Params, undefined), Seq);
        _ -> false
    end.

%% @doc The session resumed and the peer handled `PeerCount' of our frames: they leave
%% the outbox, the rest is written again in order, then the waiting commands go.
-spec resume(non_neg_integer(), #p{}) -> #p{}.
resume(PeerCount, #p{seq = Seq0} = P) ->
    {Bins, Seq} = fabric_peer_seq:resume(PeerCount, Seq0),
    P1 = lists:foldl(fun(Bin, Acc) -> act({send, ctrl, Bin}, Acc) end,
                     P#p{seq = Seq}, Bins),
    fabric_peer_issue:drain(fabric_peer_flowctl:after_replay(P1)).

%% @doc The session ends with `Reason': the messages written and not acknowledged
%% (`unconfirmed'), those waiting (`unsent') and the dropped ones not yet reported are
%% reported (and, first, the messages of `!' dropped and not reported yet, with reason
%% `overflow'); waiting `send/2' callers get `{error, Reason}'.
-spec end_session(atom(), #p{}) -> #p{}.
end_session(Reason, #p{seq = Seq0} = P) ->
    Sent = case Seq0 of
               undefined -> [];
               Seq -> [(fabric_peer_issue:item(D, M, unconfirmed))#{confirmed := C}
                    || {D, M, C} <- fabric_peer_seq:unconfirmed(Seq)]
           end,
    {Unsent, P1} = fabric_peer_issue:end_pending(Reason, fail_confirms(Reason, P)),
    Items = Sent ++ Unsent,
    %% the dropped messages not reported yet go in their own report (reason overflow)
    P2 = lists:foldl(fun(F, Acc) -> act({reply, F, ok}, Acc) end,
                     fabric_peer_issue:overflow_ended(P1), P#p.flushers),
    P3 = P2#p{overflow = 0, overflow_batch = [], flushers = [],
              seq = undefined, credit = undefined},
    case Items of
        [] -> P3;
        _ -> act({undelivered, Reason, Items}, P3)
    end.

reply(none, _, P) -> P;
reply(From, R, P) -> act({reply, From, R}, P).

%% Waiting confirmed sends fail with the reason the session ended (11.7).
fail_confirms(Reason, #p{seq = Seq0} = P) ->
    case Seq0 of
        undefined -> P;
        Seq ->
            {Froms, Seq1} = fabric_peer_seq:take_confirms(Seq),
            lists:foldl(fun(F, Acc) -> reply(F, {error, Reason}, Acc) end,
                        P#p{seq = Seq1}, Froms)
    end.

%% @doc `{mc_result, Ref, Result}' (11.8): the pending confirmed send `Ref' completes with
%% `ok' or `{error, Code}'; a `Ref' not pending or a bad result is `unknown_frame'.
-spec result_in(term(), term(), #p{}) -> {ok, #p{}} | {error, unknown_frame, term(), #p{}}.
result_in(Ref, Result, #p{seq = Seq0} = P) ->
    Reply = case Result of
                ok -> ok;
                {error, Code} when is_binary(Code) -> {error, code(Code)};
                _ -> bad
            end,
    case Reply =/= bad andalso fabric_peer_seq:confirmed(Ref, Seq0) of
        {ok, From, Seq} -> {ok, fabric_peer_issue:drain(reply(From, Reply, P#p{seq = Seq}))};
        _ -> {error, unknown_frame, {mc_result, Ref, Result}, P}
    end.

%% The codes of 11.8 and 16.8 as atoms (a code we do not know stays a binary).
code(B) ->
    Known = [noproc, not_allowed, unknown_id, bad_payload, limit, credit_exceeded,
             noconnection, session_expired, not_resumable, closed],
    case [A || A <- Known, atom_to_binary(A) =:= B] of
        [A] -> A;
        [] -> B
    end.

%% @doc The `acks' part of `info/1'.
-spec info(#p{}) -> map().
info(#p{seq = Seq0, pq = PQ} = P) ->
    N = fabric_peer_pending:len(PQ),
    case Seq0 of
        undefined -> #{};
        Seq -> #{sent => fabric_peer_seq:sent(Seq), acked => fabric_peer_seq:acked(Seq),
                 received => fabric_peer_seq:received(Seq),
                 outbox => fabric_peer_seq:outbox_len(Seq),
                 outbox_bytes => fabric_peer_seq:outbox_bytes(Seq), pending => N,
                 dropped_overflow => maps:get(dropped_overflow, P#p.stats, 0)}
    end.
