%% @doc The `credit' feature inside the established protocol (docs/protocol.md 12), without
%% I/O: counting the credited frames received against our windows (`credit_exceeded'),
%% returning their credit once delivered with room in the mailbox, batching the returns
%% into `{credit, Grants, Bytes}' frames, and applying the peer's grants (then the frames
%% waiting for credit go, `fabric_peer_issue:drain/1'). The counts are
%% `fabric_peer_credit', inside the session. Mailbox lengths come from the env's
%% `mailbox' fun (the connection asks `process_info'); it adds the action
%% `{grant_timer, Ms}': call `fabric_peer_protocol:grant_due/1' after `Ms'.
-module(fabric_peer_flowctl).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_protocol.hrl").

-export([windows/1, on/1, received/3, exceeded/2, frame_in/2, settle/2, settle_handled/3, grant_due/1,
         issued/2, recheck/1, after_replay/1, info/1]).
%% recheck/1 is the entry point of the conformance runner's `mailbox' step
-ignore_xref([recheck/1]).

-import(fabric_peer_payload, [act/2]).

%% @doc Our windows from the settings: `{credit_window, credit_bytes, credit_dest}'.
-spec windows(map()) -> fabric_peer_credit:windows().
windows(O) -> {maps:get(credit_window, O), maps:get(credit_bytes, O), maps:get(credit_dest, O)}.

%% @doc True when this connection's session has `credit'.
-spec on(#p{}) -> boolean().
on(#p{credit = C}) -> C =/= undefined.

%% @doc A decoded frame of `Size' bytes: a credited one (`m', `mc') is counted against our
%% windows. Returns its destination key (`none' for other frames, or without `credit') and
%% `exceeded' when it broke a window (13.4). The counts are carried in the key and set by
%% `settle/2' (the frame's handling between the two never touches the credit state): one
%% update of the state per frame instead of two (issue 15).
-spec received(term(), non_neg_integer(), #p{}) -> {term(), ok | exceeded, #p{}}.
received(Term, Size, #p{credit = C0} = P) ->
    case {C0, credited_dest(Term)} of
        {undefined, _} -> {none, ok, undelivered(P)};
        {_, none} -> {none, ok, undelivered(P)};
        {C, {ok, Dest}} ->
            {V, C1} = fabric_peer_credit:receive_frame(Dest, Size, C),
            {{Dest, Size, C1}, V, undelivered(P)}
    end.

undelivered(#p{delivered = none} = P) -> P;
undelivered(P) -> P#p{delivered = none}.

credited_dest({m, Dest, _}) -> {ok, Dest};
credited_dest({mc, _, Dest, _}) -> {ok, Dest};
credited_dest(_) -> none.

%% @doc The result of a credited frame over a window: dropped (an `mc' is answered
%% `{error, <<"credit_exceeded">>}'); its credit is returned at once by `settle/2'.
-spec exceeded(term(), #p{}) -> {error | refused, credit_exceeded, term(), #p{}}.
exceeded({mc, Ref, Dest, _}, P) when is_integer(Ref), Ref > 0 ->
    {refused, credit_exceeded, {mc, Dest},
     fabric_peer_commands:emit(ctrl, {mc_result, Ref, {error, <<"credit_exceeded">>}}, P)};
exceeded(Term, P) -> {error, credit_exceeded, {element(1, Term), element(2, Term)}, P}.

%% @doc The peer's `{credit, Grants, Bytes}' (with `credit'; `pass' for other frames).
-spec frame_in(term(), #p{}) -> pass | {ok, #p{}} | {error, atom(), term(), #p{}}.
frame_in(Term, #p{credit = C0} = P) when element(1, Term) =:= credit ->
    case C0 of
        undefined -> {error, unknown_frame, unknown_frame_shape, P};
        C ->
            {Verdict, C1} = case Term of
                                {credit, Grants, Bytes} -> fabric_peer_credit:grant(Grants, Bytes, C);
                                _ -> {{overflow, bad_shape}, C}
                            end,
            P1 = fabric_peer_issue:drain(P#p{credit = C1}),
            case Verdict of
                ok -> {ok, P1};
                {overflow, Why} -> {error, credit_overflow, Why, P1}
            end
    end;
frame_in(_, _) -> pass.

%% @doc A credited frame (`Key' from `received/3') was handled: to another node, dropped
%% or refused, it is returned now; delivered into a local mailbox, it is owed until that
%% mailbox holds fewer than `mailbox_high' messages (12.3). Mailboxes are checked once per
%% batch of deliveries (a grant's worth) and every `grant_delay', one check per process;
%% a grant is written when due.
-spec settle(term(), #p{}) -> #p{}.
settle(none, P) -> P;
settle({Dest, Size, C}, #p{delivered = To, o = O} = P) ->
    C1 = case To of
             none -> fabric_peer_credit:return(Dest, Size, C, 1);
             _ -> fabric_peer_credit:owe(To, Dest, Size, C)
         end,
    case fabric_peer_credit:fresh(C1) >= fabric_peer_credit:batch(maps:get(grant_every, O), C1) of
        true -> check(P#p{credit = recheck(C1, To, P), delivered = none});
        %% owed, not checked yet, the timer runs: no return, so no grant can be due
        false when To =/= none ->
            case fabric_peer_credit:timer(C1) of
                true -> P#p{credit = C1, delivered = none};
                false -> check(P#p{credit = C1, delivered = none})
            end;
        false -> check(P#p{credit = C1, delivered = none})
    end.

%% @doc A frame handled without error: `settle/2' and `fabric_peer_acks:handled/2'. A
%% credited frame delivered into a mailbox while neither a mailbox check nor an ack nor a
%% timer is due (the most frequent case of a stream) costs one update of the state.
-spec settle_handled(term(), term(), #p{}) -> #p{}.
settle_handled({Dest, Size, C} = Key, Term, #p{delivered = To, seq = Seq, o = O} = P)
  when To =/= none, Seq =/= undefined ->
    Seq1 = fabric_peer_seq:handled(Seq),
    C1 = fabric_peer_credit:owe(To, Dest, Size, C),
    Owed = fabric_peer_seq:ack_owed(Seq1),
    case Owed > 1 andalso Owed < map_get(ack_every, O) andalso fabric_peer_credit:timer(C1) andalso
        fabric_peer_credit:fresh(C1) < fabric_peer_credit:batch(map_get(grant_every, O), C1) of
        true -> P#p{credit = C1, seq = Seq1, delivered = none};
        false -> settle(Key, fabric_peer_acks:handled(Term, P))
    end;
settle_handled(Key, Term, P) -> settle(Key, fabric_peer_acks:handled(Term, P)).

%% The owed processes whose mailbox has room again are released; so is what was routed
%% to a connection that ended (it will never tell). `To': the process the frame being
%% settled goes to (`none' out of a delivery); the connection puts the message into its
%% mailbox after this, and it counts (12.3: "the message just put in counts").
recheck(C, P) -> recheck(C, none, P).

recheck(C, To, P) ->
    lists:foldl(fun(Owner, Acc) ->
                        case room(Owner, case Owner of To -> 1; _ -> 0 end, P) of
                            true -> fabric_peer_credit:release(Owner, Acc);
                            false -> Acc
                        end
                end, fabric_peer_credit:checked(C), fabric_peer_credit:owed(C)).

%% Fewer than mailbox_high messages in To's mailbox once `Extra' more arrive (or To ended).
room(To, Extra, #p{o = O, env = Env}) ->
    Mailbox = maps:get(mailbox, Env, fun(_) -> gone end),
    case To of
        %% (only a connection of this node is owed: fabric_peer_protocol)
        {route, Conn, _} -> node(Conn) =/= node() orelse Mailbox(Conn) =:= gone;
        _ ->
            case Mailbox(To) of
                gone -> true;
                N -> N + Extra < maps:get(mailbox_high, O)
            end
    end.

%% @doc The connection of another client issued (or refused: it will not be sent) one of
%% the messages we routed to it for `Dest' (docs/protocol.md 16.8): its credit is returned.
-spec issued({route, pid(), term()}, #p{}) -> #p{}.
issued(Owner, #p{credit = C0} = P) ->
    case C0 of
        undefined -> P;
        C -> check(P#p{credit = fabric_peer_credit:release_one(Owner, C)})
    end.

%% Write a grant when one is due; otherwise make sure the timer runs while returns wait or
%% mailboxes are owed.
check(#p{credit = C, o = O, connected = Conn} = P) ->
    case Conn andalso fabric_peer_credit:grant_due(maps:get(grant_every, O), C) of
        true -> timer(write_grant(P));
        false -> timer(P)
    end.

timer(#p{credit = C, o = O} = P) ->
    Needed = fabric_peer_credit:owes(C) orelse
        (P#p.connected andalso fabric_peer_credit:returns(C) > 0),
    case Needed andalso not fabric_peer_credit:timer(C) of
        true -> act({grant_timer, maps:get(grant_delay, O)},
                    P#p{credit = fabric_peer_credit:set_timer(true, C)});
        false -> P
    end.

write_grant(#p{credit = C0} = P) ->
    case fabric_peer_credit:take_grant(C0) of
        {none, _} -> P;
        {Frame, C1} -> fabric_peer_commands:emit(ctrl, Frame, P#p{credit = C1})
    end.

%% @doc The grant delay passed: owed mailboxes are checked again, the returns granted.
-spec grant_due(#p{}) -> #p{}.
grant_due(#p{credit = C00} = P) ->
    case C00 of
        undefined -> P;
        C0 ->
            C1 = recheck(fabric_peer_credit:set_timer(false, C0), P),
            P1 = P#p{credit = C1},
            timer(case P1#p.connected of
                      true -> write_grant(P1);
                      false -> P1
                  end)
    end.

%% @doc A mailbox may have room now: the owed ones are checked, a grant written if due
%% (`settle/2' does the same once per batch of deliveries). Returns the actions, in order.
-spec recheck(#p{}) -> {[fabric_peer_protocol:action()], #p{}}.
recheck(#p{credit = C0} = P0) ->
    P = case C0 of
            undefined -> P0;
            C -> check(P0#p{credit = recheck(C, P0)})
        end,
    {lists:reverse(P#p.acts), P#p{acts = []}}.

%% @doc Right after the replay of a resume: the returns accumulated while disconnected go
%% in one grant (12.4).
-spec after_replay(#p{}) -> #p{}.
after_replay(P) ->
    case on(P) of
        true -> timer(write_grant(P));
        false -> P
    end.

%% @doc The `credit' part of `info/1'.
-spec info(#p{}) -> map().
info(#p{credit = C0}) ->
    case C0 of
        undefined -> #{};
        C -> fabric_peer_credit:info(C)
    end.
