%% @doc The credit state of a session with the `credit' feature (docs/protocol.md 12), as
%% pure data: both directions' counts against the windows fixed when the session was
%% created, the returns not granted yet, and the destinations still owed (a message
%% delivered into a mailbox over `mailbox_high').
%%
%% Sender side (`out'): `OutCount', `OutBytes', `OutDest[Dest]' against the windows the
%% peer announced. Receiver side (`in'): the same counts of what was received and not
%% returned, against our own windows. A `Dest' is the wire destination (an id, an atom or
%% `{Name, Node}'), compared for equality. It lives inside `fabric_peer_session' and
%% survives the socket (12.5).
-module(fabric_peer_credit).

-export([new/2, fresh/1, checked/1, batch/2, may_issue/2, fits/2, issue/3, grant/3,
         receive_frame/3, return/4, owe/4, owed/1, owes/1, release/2, release_one/2,
         returns/1, grant_due/2, take_grant/1, timer/1, set_timer/2, info/1]).

-export_type([credit/0, windows/0, owner/0]).

%% Who a frame's credit is owed to: a local process (returned once its mailbox has room), or
%% a message routed to another client's connection `Conn' by its wire destination `Dest'
%% (returned one by one as that connection issues them on its hop, docs/protocol.md 16.8).
-type owner() :: pid() | {route, pid(), term()}.

%% `{Window, Bytes, Dest}': messages, bytes, messages to one destination.
-type windows() :: {pos_integer(), pos_integer(), pos_integer()}.

-record(credit, {
          mine :: windows(),                     % granted to the peer (we receive)
          peer :: windows(),                     % granted by the peer (we send)
          out_n = 0 :: non_neg_integer(),
          out_b = 0 :: non_neg_integer(),
          out_d = #{} :: #{term() => pos_integer()},
          in_n = 0 :: non_neg_integer(),
          in_b = 0 :: non_neg_integer(),
          in_d = #{} :: #{term() => pos_integer()},
          %% returned and not granted yet
          ret_n = 0 :: non_neg_integer(),
          ret_b = 0 :: non_neg_integer(),
          ret_d = #{} :: #{term() => pos_integer()},
          %% delivered into a mailbox over mailbox_high (pid => [{Dest, Count, Bytes}]), or routed
          %% to another client and not issued there yet (newest first)
          owed = #{} :: #{owner() => [{term(), pos_integer(), non_neg_integer()}]},
          fresh = 0 :: non_neg_integer(),        % owed since the last check of mailboxes
          timer = false :: boolean()
         }).

-opaque credit() :: #credit{}.

%% @doc A new state: `Mine' the windows we announced, `Peer' the peer's (12.1).
-spec new(windows(), windows()) -> credit().
new(Mine, Peer) -> #credit{mine = Mine, peer = Peer}.

%% @doc The message counts allow one more credited frame to `Dest' (12.2).
-spec may_issue(term(), credit()) -> boolean().
may_issue(Dest, #credit{peer = {W, _, DW}, out_n = N, out_d = OD}) ->
    N < W andalso maps:get(Dest, OD, 0) < DW.

%% @doc The byte window allows a frame of `Size' bytes (a frame bigger than the window
%% goes alone).
-spec fits(non_neg_integer(), credit()) -> boolean().
fits(Size, #credit{peer = {_, BW, _}, out_b = B}) -> B =:= 0 orelse B + Size =< BW.

%% @doc A credited frame of `Size' bytes to `Dest' is issued.
-spec issue(term(), non_neg_integer(), credit()) -> credit().
issue(Dest, Size, #credit{out_n = N, out_b = B, out_d = OD} = C) ->
    C#credit{out_n = N + 1, out_b = B + Size, out_d = OD#{Dest => maps:get(Dest, OD, 0) + 1}}.

%% @doc The peer's `{credit, Grants, Bytes}' (12.4): what fits is applied (clamped at 0);
%% `{overflow, Why}' when a count or the bytes were above what is outstanding, or the
%% shape is bad (13.4, `credit_overflow').
-spec grant(term(), term(), credit()) -> {ok | {overflow, term()}, credit()}.
grant(Grants, Bytes, C) when is_list(Grants), is_integer(Bytes), Bytes >= 0 ->
    case lists:all(fun({_, K}) -> is_integer(K) andalso K > 0; (_) -> false end, Grants) of
        false -> {{overflow, bad_shape}, C};
        true ->
            {Bad, C1} = lists:foldl(fun grant_one/2, {ok, C}, Grants),
            #credit{out_b = B} = C1,
            Bad1 = case Bytes > B of
                       true when Bad =:= ok -> {overflow, {bytes, Bytes, B}};
                       _ -> Bad
                   end,
            {Bad1, C1#credit{out_b = max(0, B - Bytes)}}
    end;
grant(_, _, C) -> {{overflow, bad_shape}, C}.

grant_one({Dest, K}, {Bad, #credit{out_n = N, out_d = OD} = C}) ->
    Out = maps:get(Dest, OD, 0),
    OD1 = case Out - K of
              L when L > 0 -> OD#{Dest => L};
              _ -> maps:remove(Dest, OD)
          end,
    Bad1 = case Bad of
               ok when K > Out -> {overflow, {dest, Dest, K, Out}};
               ok when K > N -> {overflow, {count, K, N}};
               _ -> Bad
           end,
    {Bad1, C#credit{out_n = max(0, N - min(K, Out)), out_d = OD1}}.

%% @doc A credited frame of `Size' bytes to `Dest' was received: counted, and `exceeded'
%% when it did not pass the rule of 12.2 against our windows (12.3; the caller drops it
%% and returns it at once).
-spec receive_frame(term(), non_neg_integer(), credit()) -> {ok | exceeded, credit()}.
receive_frame(Dest, Size, #credit{mine = {W, BW, DW}, in_n = N, in_b = B, in_d = ID} = C) ->
    In = maps:get(Dest, ID, 0),
    Ok = N < W andalso In < DW andalso (B =:= 0 orelse B + Size =< BW),
    {case Ok of true -> ok; false -> exceeded end,
     C#credit{in_n = N + 1, in_b = B + Size, in_d = ID#{Dest => In + 1}}}.

%% @doc `K' received frames to `Dest' of `Size' bytes in all are returned (they will go in
%% the next grant).
-spec return(term(), non_neg_integer(), credit(), pos_integer()) -> credit().
return(Dest, Size, #credit{ret_n = N, ret_b = B, ret_d = RD} = C, K) ->
    C#credit{ret_n = N + K, ret_b = B + Size, ret_d = RD#{Dest => maps:get(Dest, RD, 0) + K}}.

%% @doc A frame delivered to `Pid', whose mailbox is over `mailbox_high', or routed:
%% returned later (`release/2', `release_one/2').
%% Frames in a row to one destination are kept as one entry `{Dest, Count, Bytes}' (a
%% stream costs one entry, issue 15).
-spec owe(owner(), term(), non_neg_integer(), credit()) -> credit().
owe(Pid, Dest, Size, #credit{owed = O, fresh = F} = C) ->
    L = case O of
            #{Pid := [{Dest, K, B} | T]} -> [{Dest, K + 1, B + Size} | T];
            #{Pid := T} -> [{Dest, 1, Size} | T];
            _ -> [{Dest, 1, Size}]
        end,
    C#credit{owed = O#{Pid => L}, fresh = F + 1}.

%% @doc Frames owed since the mailboxes were last checked.
-spec fresh(credit()) -> non_neg_integer().
fresh(#credit{fresh = F}) -> F.

%% @doc The owed mailboxes were checked.
-spec checked(credit()) -> credit().
checked(C) -> C#credit{fresh = 0}.

%% @doc How many deliveries are checked together: a grant's worth (`GrantEvery', half of
%% our window, half of our per-destination window rounded up).
-spec batch(pos_integer(), credit()) -> pos_integer().
batch(GrantEvery, #credit{mine = {W, _, DW}}) -> max(1, min(GrantEvery, min(W div 2, (DW + 1) div 2))).

%% @doc The processes (and routed destinations) still owed.
-spec owed(credit()) -> [owner()].
owed(#credit{owed = O}) -> maps:keys(O).

%% @doc True while a process (or routed destination) is owed (`owed/1' is not empty).
-spec owes(credit()) -> boolean().
owes(#credit{owed = O}) -> map_size(O) > 0.

%% @doc `Pid''s mailbox has room again (or it ended, or the connection of a routed owner
%% did): what it was owed is returned.
-spec release(owner(), credit()) -> credit().
release(Pid, #credit{owed = O} = C) ->
    case maps:take(Pid, O) of
        {L, O1} -> lists:foldl(fun({D, K, S}, Acc) -> return(D, S, Acc, K) end, C#credit{owed = O1},
                               lists:reverse(L));
        error -> C
    end.

%% @doc One frame owed to `Owner' is returned (a routed message was issued on the next
%% hop). The sizes of one owner's frames are returned in any order: only their sum counts
%% (one of an entry of K frames is returned with its share of their bytes).
-spec release_one(owner(), credit()) -> credit().
release_one(Owner, #credit{owed = O} = C) ->
    case O of
        #{Owner := [{D, 1, S}]} -> return(D, S, C#credit{owed = maps:remove(Owner, O)}, 1);
        #{Owner := [{D, 1, S} | L]} -> return(D, S, C#credit{owed = O#{Owner := L}}, 1);
        #{Owner := [{D, K, S} | L]} ->
            One = S div K,
            return(D, One, C#credit{owed = O#{Owner := [{D, K - 1, S - One} | L]}}, 1);
        _ -> C
    end.

%% @doc Messages returned and not granted yet.
-spec returns(credit()) -> non_neg_integer().
returns(#credit{ret_n = N}) -> N.

%% @doc A grant is due now (12.4): the returns reach `GrantEvery' messages (or half of
%% our window), half of our per-destination window (rounded up) for one destination, or
%% a quarter of our byte window.
-spec grant_due(pos_integer(), credit()) -> boolean().
grant_due(_, #credit{ret_n = 0}) -> false;
grant_due(GrantEvery, #credit{mine = {W, BW, DW}, ret_n = N, ret_b = B, ret_d = RD}) ->
    N >= min(GrantEvery, max(1, W div 2)) orelse B >= BW div 4
        orelse lists:any(fun(K) -> K >= (DW + 1) div 2 end, maps:values(RD)).

%% @doc The grant frame of the returns not granted (`none' without any); our counts go
%% down by what it returns (the receiver subtracts when it writes the grant).
-spec take_grant(credit()) -> {tuple() | none, credit()}.
take_grant(#credit{ret_n = 0} = C) -> {none, C};
take_grant(#credit{ret_b = B, ret_d = RD, in_n = N, in_b = IB, in_d = ID} = C) ->
    Grants = lists:sort(maps:to_list(RD)),
    ID1 = maps:fold(fun(D, K, Acc) ->
                            case maps:get(D, Acc, 0) - K of
                                L when L > 0 -> Acc#{D => L};
                                _ -> maps:remove(D, Acc)
                            end
                    end, ID, RD),
    {{credit, Grants, B},
     C#credit{ret_n = 0, ret_b = 0, ret_d = #{}, in_n = max(0, N - C#credit.ret_n),
              in_b = max(0, IB - B), in_d = ID1}}.

%% @doc True while a grant timer runs.
-spec timer(credit()) -> boolean().
timer(#credit{timer = T}) -> T.

%% @doc Record whether a grant timer runs.
-spec set_timer(boolean(), credit()) -> credit().
set_timer(T, C) -> C#credit{timer = T}.

%% @doc The counts, for `fabric_peer:info/1'.
-spec info(credit()) -> map().
info(#credit{out_n = ON, out_b = OB, out_d = OD, in_n = IN, in_b = IB, owed = O, ret_n = R,
             mine = M, peer = P}) ->
    #{credit_out => ON, credit_out_bytes => OB, credit_out_dests => map_size(OD),
      credit_in => IN, credit_in_bytes => IB, credit_owed => map_size(O),
      credit_returns => R, credit_mine => M, credit_peer => P}.
