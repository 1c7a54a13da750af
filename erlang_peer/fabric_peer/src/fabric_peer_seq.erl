%% @doc The sequencing state of a session with the `acks' feature (docs/protocol.md 11),
%% as pure data: the implicit counts of both directions (`Sent', `Acked', `Received', the
%% last ack written) and the outbox of the frames issued and not acknowledged yet, each
%% kept as the exact bytes written, with what it carried (for the report of 11.7).
%%
%% Numbers are implicit: frame `Acked + 1' is the oldest in the outbox, `Sent' the newest.
%% It lives inside `fabric_peer_session' and survives the socket.
-module(fabric_peer_seq).

-export([new/2, issue/3, room/1, ack/2, handled/1, received/1, sent/1, acked/1,
         ack_owed/1, ack_written/1, check_peer/2, resume/2, outbox_len/1, outbox_bytes/1,
         unconfirmed/1, sequenced/1, confirm/2, confirmed/2, confirms/1, take_confirms/1]).

-export_type([seq/0, info/0]).

%% What an outbox entry carried: a message (its destination as the user gave it) or a
%% frame the report does not list (DEAD, exit2, ...).
-type info() :: {msg | mc, term(), term()} | ctrl.

-record(seq, {
          sent = 0 :: non_neg_integer(),
          acked = 0 :: non_neg_integer(),
          received = 0 :: non_neg_integer(),
          ack_sent = 0 :: non_neg_integer(),     % the last count we told the peer
          out = queue:new() :: queue:queue({binary(), info()}),
          n = 0 :: non_neg_integer(),            % frames in `out' (queue:len/1 is O(n))
          bytes = 0 :: non_neg_integer(),
          %% confirmed sends (11.8) waiting for their result: Ref -> caller
          next_ref = 1 :: pos_integer(),
          confirms = #{} :: #{pos_integer() => term()},
          max_frames :: pos_integer(),
          max_bytes :: pos_integer()
         }).

-opaque seq() :: #seq{}.

%% The frames that are not sequenced (11.2, 16.10, 17.2, 18.2), by their tag.
-define(UNSEQUENCED, [heartbeat, heartbeat_ack, error, ack, whereis, whereis_reply,
                      whereis_node, nodes, nodes_reply, nodeup, nodedown,
                      register_global, unregister_global, global_reply,
                      pg_join, pg_leave, pg_members, pg_reply]).

%% @doc A new state with the outbox limits `outbox_frames' and `outbox_bytes'.
-spec new(pos_integer(), pos_integer()) -> seq().
new(MaxFrames, MaxBytes) -> #seq{max_frames = MaxFrames, max_bytes = MaxBytes}.

%% @doc True when a decoded frame is sequenced (11.2): decided by its tag alone; anything
%% that is not a tuple with one of the unsequenced tags counts (an unknown or undecodable
%% frame included: pass `undecodable').
-spec sequenced(term()) -> boolean().
sequenced({m, _, _}) -> true;                % the most frequent, first (issue 15)
sequenced(T) when is_tuple(T), tuple_size(T) > 0 -> not lists:member(element(1, T), ?UNSEQUENCED);
sequenced(_) -> true.

%% @doc Issue a sequenced frame: it gets number `Sent + 1' and enters the outbox.
-spec issue(binary(), info(), seq()) -> seq().
issue(Bin, Info, #seq{sent = N, out = Q, n = L, bytes = B} = S) ->
    S#seq{sent = N + 1, out = queue:in({Bin, Info}, Q), n = L + 1, bytes = B + byte_size(Bin)}.

%% @doc True while a frame of a user command may enter (11.4): fewer frames and fewer
%% bytes than the limits, so an empty outbox always admits one.
-spec room(seq()) -> boolean().
room(#seq{n = L, bytes = B, max_frames = MF, max_bytes = MB}) ->
    L < MF andalso B < MB.

%% @doc The peer's `{ack, N}': frames up to `N' leave the outbox. `N' must be above the
%% previous ack and not above `Sent' (`bad_ack', 13.4).
-spec ack(term(), seq()) -> {ok, seq()} | {error, bad_ack}.
ack(N, #seq{acked = A, sent = Sent} = S) when is_integer(N), N > A, N =< Sent -> {ok, trim(N, S)};
ack(_, _) -> {error, bad_ack}.

trim(N, #seq{acked = A} = S) when A >= N -> S;
trim(N, #seq{acked = A, out = Q, n = L, bytes = B} = S) ->
    {{value, {Bin, _}}, Q1} = queue:out(Q),
    trim(N, S#seq{acked = A + 1, out = Q1, n = L - 1, bytes = B - byte_size(Bin)}).

%% @doc One sequenced frame of the peer was handled.
-spec handled(seq()) -> seq().
handled(#seq{received = R} = S) -> S#seq{received = R + 1}.

%% @doc Sequenced frames handled from the peer.
-spec received(seq()) -> non_neg_integer().
received(#seq{received = R}) -> R.

%% @doc Sequenced frames issued.
-spec sent(seq()) -> non_neg_integer().
sent(#seq{sent = N}) -> N.

%% @doc Frames the peer acknowledged.
-spec acked(seq()) -> non_neg_integer().
acked(#seq{acked = A}) -> A.

%% @doc Frames handled since the last count given to the peer.
-spec ack_owed(seq()) -> non_neg_integer().
ack_owed(#seq{received = R, ack_sent = A}) -> R - A.

%% @doc An ack is written now: the count it carries.
-spec ack_written(seq()) -> {non_neg_integer(), seq()}.
ack_written(#seq{received = R} = S) -> {R, S#seq{ack_sent = R}}.

%% @doc The count the peer gave in a resume handshake is in range (11.5): its outbox
%% still holds frame `N + 1' onwards (`Acked =< N =< Sent').
-spec check_peer(term(), seq()) -> boolean().
check_peer(N, #seq{acked = A, sent = Sent}) -> is_integer(N) andalso N >= A andalso N =< Sent.

%% @doc Resume with the peer's count `N' (checked with `check_peer/2'): it counts as an
%% ack, and our own count (given in the handshake) as an ack we wrote. Returns the frames
%% to write again, oldest first.
-spec resume(non_neg_integer(), seq()) -> {[binary()], seq()}.
resume(N, S0) ->
    #seq{out = Q} = S = trim(N, S0),
    {[Bin || {Bin, _} <- queue:to_list(Q)], S#seq{ack_sent = S#seq.received}}.

%% @doc Frames in the outbox.
-spec outbox_len(seq()) -> non_neg_integer().
outbox_len(#seq{n = L}) -> L.

%% @doc Bytes in the outbox.
-spec outbox_bytes(seq()) -> non_neg_integer().
outbox_bytes(#seq{bytes = B}) -> B.

%% @doc The messages written and not acknowledged, oldest first, as `{Dest, Msg,
%% Confirmed}' (Confirmed: a confirmed send, `mc').
-spec unconfirmed(seq()) -> [{term(), term(), boolean()}].
unconfirmed(#seq{out = Q}) -> [{D, M, K =:= mc} || {_, {K, D, M}} <- queue:to_list(Q)].

%% @doc A confirmed send is issued for caller `From': its `Ref' (a per-session counter).
-spec confirm(term(), seq()) -> {pos_integer(), seq()}.
confirm(From, #seq{next_ref = R, confirms = C} = S) -> {R, S#seq{next_ref = R + 1, confirms = C#{R => From}}}.

%% @doc The result for `Ref' arrived: its caller, if it is pending.
-spec confirmed(term(), seq()) -> {ok, term(), seq()} | error.
confirmed(Ref, #seq{confirms = C} = S) ->
    case maps:take(Ref, C) of
        {From, C1} -> {ok, From, S#seq{confirms = C1}};
        error -> error
    end.

%% @doc Confirmed sends waiting for their result.
-spec confirms(seq()) -> non_neg_integer().
confirms(#seq{confirms = C}) -> map_size(C).

%% @doc The callers of all pending confirmed sends (the session ends), forgetting them.
-spec take_confirms(seq()) -> {[term()], seq()}.
take_confirms(#seq{confirms = C} = S) -> {maps:values(C), S#seq{confirms = #{}}}.
