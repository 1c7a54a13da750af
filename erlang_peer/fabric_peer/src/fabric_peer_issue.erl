%% @doc When a user command of a session with `acks' is carried out (docs/protocol.md 11.4,
%% 12.2, 12.6), without I/O: at once when nothing waits for its destination, the outbox has
%% room and (with `credit') the peer's windows allow it; otherwise it waits in
%% `fabric_peer_pending', in issue order per destination, and goes when an ack, a grant or
%% a result makes room (`drain/1'). Frames to other destinations go on.
%%
%% Commands: `{send, From, Dest, Msg}' (`send/2' to a name; `From' `{relay, Notify}' for
%% a message another connection routed here, docs/protocol.md 16.8: it never times out,
%% and `Notify', if not `none', gets the result once it was issued), `{psend, Proxy, From, Msg}'
%% (`send/2' to a proxy, through the proxy), `{confirm, From, Dest, Msg}', `{proxy, Proxy,
%% Msg}' (`Proxy ! Msg'), `{exit, Proxy, From, Reason}'. A waiting message is kept as the
%% message: it is rewritten when it goes (12.2). Beyond `max_pending_messages' waiting
%% messages (the connection's and its proxies'), a blocking send is refused and a message
%% of `!' is dropped, counted, logged and reported (`overflow').
-module(fabric_peer_issue).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_protocol.hrl").

-export([admit/2, drain/1, expire/2, end_pending/2, dropped/3, overflow_ended/1, flushed/1,
         returned/2, take_allowances/1, proxy_gone/2, item/3]).

-import(fabric_peer_payload, [act/2]).

%% Dropped messages of `!' are reported in batches of this many, a batch at the latest
%% this many milliseconds after its first drop (so a report never waits for the end of an
%% overflow that lasts: a destination that stays stuck).
-define(OVERFLOW_BATCH, 1000).
-define(OVERFLOW_REPORT_MS, 100).

%% Allowance goes back to a proxy in batches of this many messages carried out: one
%% control message per batch instead of one per message (issue 15). It must stay below
%% the proxy's allowance (fabric_peer_proxy, 512): what is held back here is then always
%% less than what the proxy was given, so a proxy never waits for allowance held here
%% (everything it forwarded is, once carried out, either held here or given back).
-define(RETURN_EVERY, 128).

%% @doc Carry out `Cmd' now (`{now, Result, P}'), or keep it waiting (`queued'), or refuse
%% it (`{error, overflow}': a blocking send beyond `max_pending_messages').
-spec admit(tuple(), #p{}) -> {now, term(), #p{}} | {queued | {error, overflow}, #p{}}.
admit(Cmd, #p{pq = PQ} = P) ->
    Key = key(Cmd, P),
    case fabric_peer_pending:waiting(Key, PQ) of
        true -> enqueue(Key, Cmd, P);
        false ->
            case attempt(Cmd, Key, P) of
                {blocked, P1} -> enqueue(Key, Cmd, P1);
                {R, P1} -> {now, R, returned(Cmd, P1)}
            end
    end.

%% @doc The destination key of a command: the wire destination (a proxy's id).
-spec key(tuple(), #p{}) -> term().
key({send, _, Dest, _}, P) -> wire(Dest, P);
key({confirm, _, Dest, _}, P) -> wire(Dest, P);
key({psend, Proxy, _, _}, P) -> wire(Proxy, P);
key({proxy, Proxy, _}, P) -> wire(Proxy, P);
key({exit, Proxy, _, _}, P) -> wire(Proxy, P).

wire(Pid, #p{s = S}) when is_pid(Pid) ->
    case fabric_peer_session:proxy_id(Pid, S) of
        {ok, Id} -> Id;
        error -> Pid
    end;
wire(Dest, _) -> Dest.

%% Room in the outbox (and for a confirmed send fewer than max_confirms pending), then the
%% message windows of the peer; the byte window is checked when the frame is encoded.
attempt(Cmd, Key, P) ->
    case room(Cmd, P) =:= ok andalso credit_ok(Cmd, Key, P) of
        true -> fabric_peer_commands:carry_out(Cmd, P);
        false -> {blocked, P}
    end.

room(Cmd, #p{seq = Seq, o = O}) ->
    case fabric_peer_seq:room(Seq) of
        false -> outbox;
        true when element(1, Cmd) =:= confirm ->
            case fabric_peer_seq:confirms(Seq) < maps:get(max_confirms, O) of
                true -> ok;
                false -> confirms
            end;
        true -> ok
    end.

credit_ok({exit, _, _, _}, _, _) -> true;
credit_ok(_, Key, #p{credit = C0}) ->
    case C0 of
        undefined -> true;
        C -> fabric_peer_credit:may_issue(Key, C)
    end.

enqueue(Key, Cmd, #p{pq = PQ, o = #{max_pending_messages := Max}, env = Env} = P) ->
    Proxied = maps:get(proxies_pending, Env, fun() -> 0 end),
    case fabric_peer_pending:len(PQ) + Proxied() >= Max of
        true -> overflow(Cmd, P);
        false ->
            case deadline(Cmd, P) of
                none -> {queued, P#p{pq = fabric_peer_pending:add(Key, Cmd, none, PQ)}};
                T -> {queued, act({send_timer, max(1, T - erlang:monotonic_time(millisecond))},
                                  P#p{pq = fabric_peer_pending:add(Key, Cmd, T, PQ)})}
            end
    end.

%% (the clock is read only for a command that has a deadline: not for a message of `!')
deadline({send, {relay, _}, _, _}, _) -> none;
deadline({K, _, _, _}, #p{o = O}) when K =:= send; K =:= confirm ->
    erlang:monotonic_time(millisecond) + maps:get(send_timeout, O);
deadline({psend, _, _, {_, T}}, _) -> T;
deadline(_, _) -> none.

overflow({send, _, _, _}, P) -> {{error, overflow}, P};
overflow({confirm, _, _, _}, P) -> {{error, overflow}, P};
overflow({psend, _, From, _} = Cmd, P) ->
    {queued, returned(Cmd, act({reply, From, {error, overflow}}, P))};
overflow({proxy, Proxy, Msg} = Cmd, P) -> {queued, returned(Cmd, dropped(Proxy, Msg, P))};
overflow({exit, _, _, _}, P) ->
    ?LOG_WARNING(#{what => exit_signal_dropped, peer => P#p.peer, reason => max_pending_messages},
                 ?FABRIC_LOG),
    {queued, fabric_peer_protocol:count(dropped_overflow, P)}.

%% @doc A message of `!' dropped (12.6): counted, logged at the first drop of an overflow,
%% reported in batches.
-spec dropped(pid(), term(), #p{}) -> #p{}.
dropped(Proxy, Msg, #p{overflow = N, overflow_batch = B} = P) ->
    N =:= 0 andalso ?LOG_WARNING(#{what => overflow, peer => P#p.peer, reason => max_pending_messages,
                                   text => "messages to proxies dropped: max_pending_messages wait "
                                           "for outbox room or credit; counted (dropped_overflow) "
                                           "and reported"}, ?FABRIC_LOG),
    P1 = fabric_peer_protocol:count(dropped_overflow, P),
    B1 = [item(Proxy, Msg, unsent) | B],
    case (N + 1) rem ?OVERFLOW_BATCH =:= 0 of
        true -> act({undelivered, overflow, lists:reverse(B1)}, P1#p{overflow = N + 1, overflow_batch = []});
        false when B =:= [] ->
            act({send_timer, ?OVERFLOW_REPORT_MS}, P1#p{overflow = N + 1, overflow_batch = B1});
        false -> P1#p{overflow = N + 1, overflow_batch = B1}
    end.

%% A batch of dropped messages not reported yet is reported now (its timer, or an earlier
%% one, fired); the overflow goes on (its summary line comes when it ends).
report_batch(#p{overflow_batch = []} = P) -> P;
report_batch(#p{overflow_batch = B} = P) ->
    act({undelivered, overflow, lists:reverse(B)}, P#p{overflow_batch = []}).

%% @doc The overflow ended (or the session does): one summary line, the last batch.
-spec overflow_ended(#p{}) -> #p{}.
overflow_ended(#p{overflow = 0} = P) -> P;
overflow_ended(#p{overflow = N, overflow_batch = B} = P) ->
    ?LOG_WARNING(#{what => overflow_ended, peer => P#p.peer, dropped => N}, ?FABRIC_LOG),
    P1 = P#p{overflow = 0, overflow_batch = []},
    case B of
        [] -> P1;
        _ -> act({undelivered, overflow, lists:reverse(B)}, P1)
    end.

%% @doc A report item (11.7).
-spec item(term(), term(), unconfirmed | unsent) -> map().
item(Dest, Msg, State) -> #{dest => Dest, msg => Msg, confirmed => false, state => State}.

%% @doc A proxy's message was carried out (or refused): the proxy may forward one more,
%% given back with the next ?RETURN_EVERY.
-spec returned(tuple(), #p{}) -> #p{}.
returned({psend, Proxy, _, _}, P) -> return_one(Proxy, P);
returned({proxy, Proxy, _}, P) -> return_one(Proxy, P);
returned(_, P) -> P.

return_one(Proxy, #p{allow = A} = P) ->
    case A of
        #{Proxy := N} when N + 1 >= ?RETURN_EVERY ->
            P#p{allow = maps:remove(Proxy, A), allow_due = [{Proxy, N + 1} | P#p.allow_due]};
        #{Proxy := N} -> P#p{allow = A#{Proxy := N + 1}};
        _ -> P#p{allow = A#{Proxy => 1}}
    end.

%% @doc The allowance to give back to proxies, as control actions.
-spec take_allowances(#p{}) -> {[{control, pid(), {allow, pos_integer()}}], #p{}}.
take_allowances(#p{allow_due = []} = P) -> {[], P};
take_allowances(#p{allow_due = Due} = P) ->
    {[{control, Proxy, {allow, N}} || {Proxy, N} <- lists:reverse(Due)], P#p{allow_due = []}}.

%% @doc A proxy ended: the allowance held back for it is forgotten.
-spec proxy_gone(pid(), #p{}) -> #p{}.
proxy_gone(Proxy, #p{allow = A} = P) when is_map_key(Proxy, A) -> P#p{allow = maps:remove(Proxy, A)};
proxy_gone(_, P) -> P.

%% @doc Carry out the waiting commands that can go now, oldest first per destination;
%% everything stops while the outbox is full.
-spec drain(#p{}) -> #p{}.
drain(#p{pq = PQ} = P) ->
    case fabric_peer_pending:len(PQ) of
        0 -> flushed(overflow_ended(P));
        _ -> after_drain(drain_keys(fabric_peer_pending:keys(PQ), P))
    end.

after_drain(#p{pq = PQ, o = #{max_pending_messages := Max}} = P) ->
    P1 = case fabric_peer_pending:len(PQ) < Max of
             true -> overflow_ended(P);
             false -> P
         end,
    flushed(P1).

drain_keys([], P) -> P;
drain_keys([K | Ks], P) ->
    case drain_key(K, P) of
        {stop, P1} -> P1;
        {next, P1} -> drain_keys(Ks, P1)
    end.

%% The commands of key K that can go, oldest first; those carried out leave the pending
%% queue together at the end of the run (carrying out a command never touches it).
drain_key(K, #p{pq = PQ} = P) -> drain_key(K, fabric_peer_pending:commands(K, PQ), 0, P).

drain_key(K, Q, Done, P) ->
    case fabric_peer_pending:next(Q) of
        empty -> {next, dropped_run(K, Done, P)};
        {ok, Cmd, Q1} ->
            case room(Cmd, P) of
                outbox -> {stop, dropped_run(K, Done, P)};
                confirms -> {next, dropped_run(K, Done, P)};
                ok ->
                    case credit_ok(Cmd, K, P) andalso fabric_peer_commands:carry_out(Cmd, P) of
                        false -> {next, dropped_run(K, Done, P)};
                        {blocked, P1} -> {next, dropped_run(K, Done, P1)};
                        {R, P1} -> drain_key(K, Q1, Done + 1, returned(Cmd, answer(Cmd, R, P1)))
                    end
            end
    end.

dropped_run(_, 0, P) -> P;
dropped_run(K, Done, #p{pq = PQ} = P) -> P#p{pq = fabric_peer_pending:drop(K, Done, PQ)}.

%% The caller of a command that waited gets its result now.
answer({send, From, _, _}, R, P) -> reply(From, R, P);
answer({psend, _, From, _}, R, P) -> reply(From, R, P);
answer({confirm, _, _, _}, confirming, P) -> P;
answer({confirm, From, _, _}, R, P) -> reply(From, R, P);
answer({proxy, _, _}, {error, Why}, P) ->
    ?LOG_WARNING(#{what => proxy_message_not_sent, peer => P#p.peer, reason => Why}, ?FABRIC_LOG),
    fabric_peer_protocol:count(local_errors, P);
answer(_, _, P) -> P.

reply(none, _, P) -> P;
reply({relay, none}, _, P) -> P;
reply({relay, Notify}, R, P) -> act({reply, Notify, R}, P);
reply({_, _} = From, R, P) -> act({reply, From, R}, P);
reply(_, _, P) -> P.

%% @doc `close' callers wait until nothing is unacknowledged or waiting; the ack we owe
%% goes out before they are answered, so the peer has nothing of ours to report
%% unconfirmed.
-spec flushed(#p{}) -> #p{}.
flushed(#p{flushers = []} = P) -> P;
flushed(#p{flushers = Fs, seq = Seq, pq = PQ} = P) ->
    case fabric_peer_pending:len(PQ) =:= 0 andalso
        fabric_peer_seq:outbox_len(Seq) =:= 0 of
        true -> lists:foldl(fun(F, Acc) -> act({reply, F, ok}, Acc) end,
                            fabric_peer_acks:ack_due(P#p{flushers = []}), Fs);
        false -> P
    end.

%% @doc Blocking callers waiting since before their deadline get `{error, timeout}'
%% (nothing is sent); the dropped messages of `!' not reported yet are reported.
-spec expire(integer(), #p{}) -> #p{}.
expire(Now, P0) ->
    #p{pq = PQ} = P = report_batch(P0),
    {Gone, PQ1} = fabric_peer_pending:expire(Now, PQ),
    lists:foldl(fun({send, From, _, _}, Acc) -> reply(From, {error, timeout}, Acc);
                   ({confirm, From, _, _}, Acc) -> reply(From, {error, timeout}, Acc);
                   ({psend, _, From, _} = Cmd, Acc) ->
                        returned(Cmd, reply(From, {error, timeout}, Acc))
                end, P#p{pq = PQ1}, Gone).

%% @doc The session ends with `Reason': the waiting messages, in issue order, as report
%% items (`unsent'); their callers get `{error, Reason}'.
-spec end_pending(atom(), #p{}) -> {[map()], #p{}}.
end_pending(Reason, #p{pq = PQ} = P) ->
    {Items, P1} = lists:foldl(
                    fun({send, From, D, M}, {L, Acc}) ->
                            {[item(D, M, unsent) | L], reply(From, {error, Reason}, Acc)};
                       ({psend, Proxy, From, {M, _}}, {L, Acc}) ->
                            {[item(Proxy, M, unsent) | L], reply(From, {error, Reason}, Acc)};
                       ({confirm, From, D, M}, {L, Acc}) ->
                            {[(item(D, M, unsent))#{confirmed := true} | L],
                             reply(From, {error, Reason}, Acc)};
                       ({proxy, Proxy, M}, {L, Acc}) -> {[item(Proxy, M, unsent) | L], Acc};
                       (_, Acc) -> Acc
                    end, {[], P}, fabric_peer_pending:to_list(PQ)),
    {lists:reverse(Items), P1#p{pq = fabric_peer_pending:new(), allow = #{}}}.
