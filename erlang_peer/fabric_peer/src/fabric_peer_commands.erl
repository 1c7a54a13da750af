%% @doc The local commands of the established protocol (docs/protocol.md 4, 5, 11.4),
%% without I/O: `fabric_peer:send/2', `Proxy ! Msg' and a proxy's exit signal become
%% frames (payload rewritten, size checked against the peer's limit), written at once or,
%% with `acks' and no outbox room, waiting in issue order (`fabric_peer_acks:admit/3').
%% Works on the protocol state of `fabric_peer_protocol', which exposes these functions.
-module(fabric_peer_commands).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_protocol.hrl").

-export([send/3, send/4, send_confirmed/4, proxy_msg/3, proxy_send/5, proxy_exit/4, carry_out/2, emit/3,
         exit_not_supported/3]).

-import(fabric_peer_payload, [rewrite_out/2, pid_id/2, act/2]).

%% `[alias | Ref]' is OTP's reply tag of a gen call: improper on purpose
-dialyzer({no_improper_lists, [gen_reply_out/3]}).

-type proto() :: fabric_peer_protocol:proto().
-type action() :: fabric_peer_protocol:action().

%% @doc `fabric_peer:send/2' through this connection: to a proxy pid, a name or
%% `{Name, Node}'.
-spec send(pid() | atom() | {atom(), atom()} | term(), term(), proto()) ->
          {ok | {error, term()}, [action()], proto()}.
send(Dest, Msg, P) ->
    case send(Dest, Msg, none, P) of
        {wait, Acts, P1} -> {ok, Acts, P1};
        R -> R
    end.

%% @doc `send/3' for caller `From': with `acks' and no outbox room or credit it waits
%% (`wait': the reply comes later as a `reply' action, or `{error, timeout}' after
%% `send_timeout'). `From' `{relay, Notify}': a message routed here by another connection
%% (16.8), which waits without a timeout; `Notify' (unless `none') gets the result of a
%% `wait' when it is issued.
-spec send(term(), term(), gen_statem:from() | none | {relay, gen_statem:from() | none}, proto()) ->
          {ok | wait | {error, term()}, [action()], proto()}.
send(Dest, Msg, From, #p{s = S} = P) ->
    {Reply, P1} = case wire_dest(Dest, S) of
                      {ok, _} when P#p.connected orelse map_get(max_queue, P#p.o) =/= 0 ->
                          admitted(admit({send, From, Dest, Msg}, P));
                      {ok, _} -> send_to(Dest, Msg, P);
                      E -> {E, P}
                  end,
    {Acts, P2} = done(P1),
    {Reply, Acts, P2}.

admitted({now, blocked, P}) -> {wait, P};
admitted({now, R, P}) -> {R, P};
admitted({queued, P}) -> {wait, P};
admitted({E, P}) -> {E, P}.

%% @doc A confirmed send (docs/protocol.md 11.8) for caller `From': `wait' (the result
%% comes as a `reply' action: `ok' or `{error, Code}'), or an error at once, nothing sent
%% (`not_supported' without `acks').
-spec send_confirmed(term(), term(), gen_statem:from(), proto()) ->
          {wait | {error, term()}, [action()], proto()}.
send_confirmed(Dest, Msg, From, #p{s = S} = P) ->
    {Reply, P1} = case {fabric_peer_acks:on(P), wire_dest(Dest, S)} of
                      {false, _} -> {{error, not_supported}, P};
                      {true, {ok, _}} ->
                          case admitted(admit({confirm, From, Dest, Msg}, P)) of
                              {confirming, Pa} -> {wait, Pa};
                              R -> R
                          end;
                      {true, E} -> {E, P}
                  end,
    {Acts, P2} = done(P1),
    {Reply, Acts, P2}.

confirm_now(From, Dest, Msg, #p{s = S, seq = Seq0} = P) ->
    {Ref, Seq} = fabric_peer_seq:confirm(From, Seq0),
    P1 = P#p{seq = Seq},
    {ok, W} = wire_dest(Dest, S),
    case rewrite_out(Msg, P1) of
        {ok, Payload, P2} ->
            case emit_checked(msg, {mc, Ref, W, Payload}, {mc, Dest, Msg}, P2) of
                {ok, P3} -> {confirming, flush_redead(fabric_peer_protocol:count(messages_out, P3))};
                {E, P3} -> {E, unconfirm(Ref, P3#p{redead = []})}
            end;
        {{error, _} = E, P2} -> {E, unconfirm(Ref, P2#p{redead = []})}
    end.

unconfirm(Ref, #p{seq = Seq0} = P) ->
    {ok, _, Seq} = fabric_peer_seq:confirmed(Ref, Seq0),
    P#p{seq = Seq}.

send_to(Dest, Msg, #p{s = S} = P) ->
    case wire_dest(Dest, S) of
        {ok, W} -> send_message(W, Dest, Msg, P);
        E -> {E, P}
    end.

wire_dest(Pid, S) when is_pid(Pid) ->
    case fabric_peer_session:proxy_id(Pid, S) of
        {ok, Id} -> {ok, Id};
        error -> {error, not_a_proxy}
    end;
wire_dest(Name, _) when is_atom(Name) -> {ok, Name};
wire_dest({Name, Node} = D, _) when is_atom(Name), is_atom(Node) -> {ok, D};
wire_dest(_, _) -> {error, badarg}.

%% Without `acks' every command goes at once (fabric_peer_issue:admit/2 otherwise).
admit(Cmd, P) ->
    case fabric_peer_acks:on(P) of
        true -> fabric_peer_issue:admit(Cmd, P);
        false ->
            {R, P1} = carry_out(Cmd, P),
            {now, R, fabric_peer_issue:returned(Cmd, P1)}
    end.

%% @doc Carry out a command (fabric_peer_issue checked the outbox room and the message
%% windows): its result, `confirming' for a confirmed send now waiting for its result, or
%% `blocked' when the frame does not fit the byte window (it waits, as the message).
-spec carry_out(tuple(), proto()) -> {term(), proto()}.
carry_out({send, _, Dest, Msg}, P) -> send_to(Dest, Msg, P);
carry_out({psend, Proxy, _, {Msg, _}}, P) -> proxy_msg_now(Proxy, Msg, P);
carry_out({confirm, From, Dest, Msg}, #p{s = S} = P) ->
    case wire_dest(Dest, S) of
        {ok, _} -> confirm_now(From, Dest, Msg, P);
        E -> {E, P}
    end;
carry_out({proxy, Proxy, Msg}, P) -> proxy_msg_now(Proxy, Msg, P);
carry_out({exit, Proxy, From, Reason}, P) -> {ok, proxy_exit_now(Proxy, From, Reason, P)}.

%% @doc A message sent to proxy `Proxy' (`Proxy ! Msg'): errors are logged and counted.
-spec proxy_msg(pid(), term(), proto()) -> proto().
proxy_msg(Proxy, Msg, P0) ->
    case admit({proxy, Proxy, Msg}, P0) of
        {now, {error, Why}, P} ->
            ?LOG_WARNING(#{what => proxy_message_not_sent, peer => P#p.peer, reason => Why}, ?FABRIC_LOG),
            fabric_peer_protocol:count(local_errors, P);
        {now, _, P} -> P;
        {_, P} -> P
    end.

%% @doc `send/2' to proxy `Proxy', forwarded by the proxy (so that it keeps its order with
%% the proxy's `!' messages): `From' gets the result, at the latest at `Deadline'.
-spec proxy_send(pid(), gen_statem:from(), term(), integer(), proto()) -> proto().
proxy_send(Proxy, From, Msg, Deadline, P0) ->
    Cmd = {psend, Proxy, From, {Msg, Deadline}},
    case erlang:monotonic_time(millisecond) >= Deadline of
        true -> act({reply, From, {error, timeout}}, fabric_peer_issue:returned(Cmd, P0));
        false ->
            case admit(Cmd, P0) of
                {now, blocked, P} -> P;
                {now, R, P} -> act({reply, From, R}, P);
                {_, P} -> P
            end
    end.

proxy_msg_now(Proxy, Msg0, #p{s = S} = P0) ->
    case fabric_peer_session:proxy_id(Proxy, S) of
        {ok, Id} ->
            {Msg, P} = gen_reply_out(Proxy, Msg0, P0),
            case send_message(Id, Proxy, Msg, P) of
                {blocked, _} -> {blocked, P0};
                R -> R
            end;
        %% the proxy ended: like a message to an ended process
        error -> {ok, P0}
    end.

%% @doc Proxy `Proxy' received an exit signal from local process `From' that the peer
%% must see (an `exit2' frame, with the `link' feature).
-spec proxy_exit(pid(), pid(), term(), proto()) -> proto().
proxy_exit(Proxy, From, Reason, P0) ->
    case admit({exit, Proxy, From, Reason}, P0) of
        {_, _, P} -> P;
        {_, P} -> P
    end.

proxy_exit_now(Proxy, From, Reason, #p{s = S} = P) ->
    case {fabric_peer_session:proxy_id(Proxy, S), link_enabled(P)} of
        {{ok, B}, true} ->
            {A, P1} = pid_id(From, P),
            case rewrite_out(Reason, P1) of
                {ok, W, P2} -> flush_redead(emit(ctrl, exit_frame(A, B, Reason, W, P2), P2));
                {{error, Why}, _} ->
                    ?LOG_WARNING(#{what => exit_reason_not_sendable, reason => Why}, ?FABRIC_LOG),
                    P1#p{redead = []}
            end;
        {{ok, _}, false} when Reason =:= normal ->
            %% exit(Proxy, normal), or a linked local process ending normally: a process
            %% that does not trap exits ignores it, nothing is lost
            P;
        {{ok, _}, false} ->
            exit_not_supported(Proxy, Reason, P),
            fabric_peer_protocol:count(local_errors, P);
        {error, _} -> P
    end.

%% A trapped `kill' is a link signal (exit(Proxy, kill) cannot be trapped: the proxy would be
%% dead): a peer that agreed on `link_exit' gets it as one (docs/protocol.md 5.2).
exit_frame(A, B, kill, W, #p{feats = #{<<"link_exit">> := true}}) -> {link_exit, A, B, W};
exit_frame(A, B, _, W, _) -> {exit2, A, B, W}.

%% @doc `exit(Proxy, Reason)' on a proxy of a peer without the `link' feature (an original
%% peer): the remote process cannot be signalled. Logged, and counted in `local_errors' by
%% the caller; `fabric_peer:exit/2' returns `{error, not_supported}' instead. For `kill'
%% the proxy itself is dead (kill cannot be trapped), the remote process lives on.
-spec exit_not_supported(pid(), term(), proto()) -> ok.
exit_not_supported(Proxy, Reason, P) ->
    ?LOG_WARNING(#{what => exit_not_supported, peer => P#p.peer, proxy => Proxy, reason => Reason,
                   text => case Reason of
                               kill -> "exit(Proxy, kill): the peer has no link feature (an "
                                       "original peer?), its process lives on; the proxy is "
                                       "dead, the peer's next reference to the process gets "
                                       "a new proxy";
                               _ -> "exit(Proxy, Reason) not sent: the peer has no link "
                                    "feature (an original peer?)"
                           end}, ?FABRIC_LOG).

%%% sending

send_message(Dest, UserDest, Msg, P) ->
    case rewrite_out(Msg, P) of
        {ok, W, P1} ->
            case emit_checked(msg, {m, Dest, W}, {msg, UserDest, Msg}, P1) of
                {ok, P2} -> {ok, flush_redead(fabric_peer_protocol:count(messages_out, P2))};
                %% over the byte window: the exports stay, the encoding is dropped (12.2)
                {blocked, P2} -> {blocked, P2#p{redead = []}};
                {E, P2} -> {E, P2#p{redead = []}}
            end;
        {{error, _} = E, P1} -> {E, P1#p{redead = []}}
    end.

flush_redead(#p{redead = []} = P) -> P;
flush_redead(#p{redead = Ds} = P) ->
    lists:foldl(fun(Dead, Acc) -> emit(ctrl, Dead, Acc) end, P#p{redead = []}, lists:reverse(Ds)).

%% @doc A frame goes out now, or into the outbox while there is no socket (control frames
%% always; messages up to `max_queue'; with `acks' see fabric_peer_acks:emit/5).
-spec emit(msg | ctrl, term(), proto()) -> proto().
emit(Kind, Term, P) ->
    {_, P1} = emit_checked(Kind, Term, ctrl, P),
    P1.

emit_checked(Kind, Term, Info, P) ->
    Bin = case Kind of
              msg -> fabric_peer_frame:encode_message(P#p.mode, maps:get(compress, P#p.o, false), Term);
              ctrl -> fabric_peer_frame:encode_plain(Term)
          end,
    Acks = fabric_peer_acks:on(P),
    case fabric_peer_frame:check_size(Bin, P#p.peer_max) of
        {error, _} = E -> {E, P};
        ok when Acks, Kind =:= msg -> credited(Term, Bin, Info, P);
        ok when Acks -> fabric_peer_acks:emit(Kind, Term, Bin, Info, P);
        ok when P#p.connected -> {ok, act({send, Kind, Bin}, P)};
        ok -> fabric_peer_protocol:unsent(Kind, Bin, P)
    end.

%% A credited frame (m, mc) takes credit as it is issued, if it fits the byte window.
credited(Term, Bin, Info, #p{credit = C0} = P) ->
    case C0 of
        undefined -> fabric_peer_acks:emit(msg, Term, Bin, Info, P);
        C ->
            Size = byte_size(Bin),
            case fabric_peer_credit:fits(Size, C) of
                false -> {blocked, P};
                true ->
                    Dest = case Term of {m, D, _} -> D; {mc, _, D, _} -> D end,
                    C1 = fabric_peer_credit:issue(Dest, Size, C),
                    fabric_peer_acks:emit(msg, Term, Bin, Info, C1, P)
            end
    end.

link_enabled(#p{mode = extended, feats = #{<<"link">> := true}}) -> true;
link_enabled(_) -> false.

done(#p{acts = []} = P) -> {[], P};
done(#p{acts = As} = P) -> {lists:reverse(As), P#p{acts = []}}.

%% gen_server/gen_statem replies to a call from the peer get their alias tag back (see
%% fabric_peer_protocol, "gen calls").
gen_reply_out(Proxy, {Ref, Reply} = Msg, #p{s = S} = P) when is_reference(Ref) ->
    case fabric_peer_session:call_out(Ref, Proxy, S) of
        {ok, S1} -> {{[alias | Ref], Reply}, P#p{s = S1}};
        error -> {Msg, P}
    end;
gen_reply_out(_, Msg, P) -> {Msg, P}.
