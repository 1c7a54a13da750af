%% @doc The user commands of one connection that wait for outbox room or credit
%% (docs/protocol.md 11.4, 12.2, 12.6), as pure data: one queue per destination key (the
%% wire destination; for an `exit2' the proxy's id), so that commands to one destination
%% keep their issue order while the others go on, and the keys with waiting commands in
%% the order they started waiting. Each entry has a number (issue order, for the report of
%% 11.7) and a deadline (`none' for the commands that never time out).
-module(fabric_peer_pending).

-export([new/0, len/1, waiting/2, add/4, keys/1, commands/2, next/1, drop/3, to_list/1,
         expire/2]).

-export_type([pending/0]).

-type entry() :: {non_neg_integer(), tuple(), integer() | none}.

-record(pq, {
          dests = #{} :: #{term() => queue:queue(entry())},
          order = queue:new() :: queue:queue(term()),
          n = 0 :: non_neg_integer(),
          senders = 0 :: non_neg_integer(),          % entries with a deadline
          next = 0 :: non_neg_integer()
         }).

-opaque pending() :: #pq{}.

%% @doc Nothing waiting.
-spec new() -> pending().
new() -> #pq{}.

%% @doc Commands waiting.
-spec len(pending()) -> non_neg_integer().
len(#pq{n = N}) -> N.


%% @doc True while commands to `Key' wait (a new one must wait behind them).
-spec waiting(term(), pending()) -> boolean().
waiting(Key, #pq{dests = D}) -> is_map_key(Key, D).

%% @doc `Cmd' to `Key' waits, with `Deadline' (`none': no timeout).
-spec add(term(), tuple(), integer() | none, pending()) -> pending().
add(Key, Cmd, Deadline, #pq{dests = D, order = O, n = N, senders = S, next = I} = P) ->
    S1 = case Deadline of none -> S; _ -> S + 1 end,
    case D of
        #{Key := Q} -> P#pq{dests = D#{Key := queue:in({I, Cmd, Deadline}, Q)}, n = N + 1,
                            senders = S1, next = I + 1};
        _ -> P#pq{dests = D#{Key => queue:from_list([{I, Cmd, Deadline}])}, order = queue:in(Key, O),
                  n = N + 1, senders = S1, next = I + 1}
    end.

%% @doc The keys with waiting commands, in the order they started waiting.
-spec keys(pending()) -> [term()].
keys(#pq{order = O}) -> queue:to_list(O).

%% @doc The commands waiting for `Key', oldest first, as a queue to take them from
%% (`next/1'); the ones carried out are then removed at once with `drop/3' (a stream
%% waiting for credit is carried out in runs, issue 15).
-spec commands(term(), pending()) -> queue:queue(entry()).
commands(Key, #pq{dests = D}) ->
    case D of
        #{Key := Q} -> Q;
        _ -> queue:new()
    end.

%% @doc The next command of a queue from `commands/2', and the rest.
-spec next(queue:queue(entry())) -> {ok, tuple(), queue:queue(entry())} | empty.
next(Q) ->
    case queue:out(Q) of
        {{value, {_, Cmd, _}}, Q1} -> {ok, Cmd, Q1};
        {empty, _} -> empty
    end.

%% @doc Remove the `K' oldest commands waiting for `Key' (they were carried out).
-spec drop(term(), non_neg_integer(), pending()) -> pending().
drop(_, 0, P) -> P;
drop(Key, K, #pq{dests = D, order = O, n = N, senders = S} = P) ->
    #{Key := Q} = D,
    {Out, Q1} = case queue:len(Q) of
                    K -> {Q, queue:new()};
                    _ -> queue:split(K, Q)
                end,
    S1 = S - length([T || {_, _, T} <- queue:to_list(Out), T =/= none]),
    case queue:is_empty(Q1) of
        true -> P#pq{dests = maps:remove(Key, D), order = queue:delete(Key, O), n = N - K, senders = S1};
        false -> P#pq{dests = D#{Key := Q1}, n = N - K, senders = S1}
    end.

%% @doc Every waiting command, in issue order.
-spec to_list(pending()) -> [tuple()].
to_list(#pq{dests = D}) ->
    [Cmd || {_, Cmd, _} <- lists:sort(lists:append([queue:to_list(Q) || Q <- maps:values(D)]))].

%% @doc The commands whose deadline is before `Now' leave (returned in issue order).
-spec expire(integer(), pending()) -> {[tuple()], pending()}.
expire(_, #pq{senders = 0} = P) -> {[], P};
expire(Now, #pq{dests = D, order = O} = P) ->
    {Gone, D1} = maps:fold(fun(K, Q, {G, Acc}) ->
                                   {Keep, Out} = lists:partition(
                                                   fun({_, _, none}) -> true;
                                                      ({_, _, T}) -> T > Now
                                                   end, queue:to_list(Q)),
                                   case Keep of
                                       [] -> {Out ++ G, Acc};
                                       _ -> {Out ++ G, Acc#{K => queue:from_list(Keep)}}
                                   end
                           end, {[], #{}}, D),
    O1 = queue:filter(fun(K) -> is_map_key(K, D1) end, O),
    N = length(Gone),
    {[Cmd || {_, Cmd, _} <- lists:sort(Gone)],
     P#pq{dests = D1, order = O1, n = P#pq.n - N, senders = P#pq.senders - N}}.

-ifdef(TEST).

%% @doc Commands waiting with a deadline (blocking callers).
-spec senders(pending()) -> non_neg_integer().
senders(#pq{senders = S}) -> S.
-include_lib("eunit/include/eunit.hrl").

peek(Key, P) ->
    case next(commands(Key, P)) of
        {ok, Cmd, _} -> {ok, Cmd};
        empty -> empty
    end.

drop(Key, P) -> drop(Key, 1, P).

order_per_key_test() ->
    P = lists:foldl(fun({K, C}, Acc) -> add(K, C, none, Acc) end, new(),
                    [{a, {1}}, {b, {2}}, {a, {3}}]),
    ?assertEqual([a, b], keys(P)),
    ?assert(waiting(a, P)),
    ?assertEqual({ok, {1}}, peek(a, P)),
    P1 = drop(a, P),
    ?assertEqual({ok, {3}}, peek(a, P1)),
    ?assertEqual([{2}, {3}], to_list(P1)),
    P2 = drop(a, P1),
    ?assertNot(waiting(a, P2)),
    ?assertEqual([b], keys(P2)),
    ?assertEqual(1, len(P2)).

expire_test() ->
    P = add(b, {y}, 50, add(a, {x}, 10, add(a, {w}, none, new()))),
    ?assertEqual(2, senders(P)),
    {Gone, P1} = expire(20, P),
    ?assertEqual([{x}], Gone),
    ?assertEqual(2, len(P1)),
    ?assertEqual(1, senders(P1)),
    ?assertEqual([{w}, {y}], to_list(P1)).
-endif.
