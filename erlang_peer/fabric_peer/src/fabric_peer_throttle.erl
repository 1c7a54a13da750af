%% @doc Per-address throttling of failed authentications on a server (README "Security").
%%
%% `max_auth_failures' failed handshakes from one address within `auth_failure_window' ms
%% make the server refuse that address's new connections for `auth_block_time' ms (the
%% Python server's rule and defaults). `max_auth_failures => 0' disables it. A handshake
%% that times out counts as a failure too (`timed_out/3'): holding connections open without
%% authenticating is how an attacker without the secret would otherwise keep slots busy.
%%
%% An address counts as its unit (`unit/1'): an IPv4 address as itself (also when it comes
%% IPv4-mapped, `::ffff:a.b.c.d'), an IPv6 address as its /64, since one host usually holds
%% a whole /64 and could otherwise rotate through it (the Python server's rule).
%%
%% The entries live in one public ETS table (created by `fabric_peer_sup'), keyed by
%% `{ServerRef, Unit}', bounded to `?MAX_ADDRESSES' entries: beyond, the least recently used
%% entry is forgotten. The rule itself is the pure `record/4' and `left/2' (EUnit below).
%% Concurrent failures of one address may race on its entry; at worst one failure is not
%% counted, which only delays a block by one attempt.
-module(fabric_peer_throttle).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([table/0, failed/3, timed_out/3, blocked/3, forget/1, unit/1, unit_text/1]).

-export_type([entry/0]).

-define(TABLE, fabric_peer_auth_failures).
%% Addresses tracked over all servers of the node: an attacker rotating addresses costs at
%% most this many small entries.
-define(MAX_ADDRESSES, 10000).

%% {Failure times (ms, newest first, at most max_auth_failures), blocked until (monotonic ms,
%% which may be negative) or none}
-type entry() :: {[integer()], integer() | none}.

%% @doc The ETS table's name (created by `fabric_peer_sup').
-spec table() -> atom().
table() -> ?TABLE.

%% @doc The unit `Ip' is counted as, by this throttle and by the admission limits
%% (`fabric_peer_admission'): an IPv4 address itself, an IPv4-mapped IPv6 address as that
%% IPv4 address, any other IPv6 address as its /64 (the last 64 bits zero).
-spec unit(inet:ip_address() | undefined) -> inet:ip_address() | undefined.
unit({0, 0, 0, 0, 0, 16#ffff, A, B}) -> {A bsr 8, A band 255, B bsr 8, B band 255};
unit({A, B, C, D, _, _, _, _}) -> {A, B, C, D, 0, 0, 0, 0};
unit(Ip) -> Ip.

%% @doc The unit of `Ip' (`unit/1') as text for logs: `"192.0.2.1"', `"2001:db8::/64"'.
-spec unit_text(inet:ip_address() | undefined) -> string().
unit_text(Ip) ->
    case unit(Ip) of
        undefined -> "unknown";
        {_, _, _, _, _, _, _, _} = U -> inet:ntoa(U) ++ "/64";
        U -> inet:ntoa(U)
    end.

%% @doc Record a failed authentication from `Ip' on server `Ref'. Returns `block' when this
%% failure starts a block of the address, `ok' otherwise.
-spec failed(reference(), inet:ip_address(), map()) -> ok | block.
failed(Ref, Ip, #{max_auth_failures := Max} = O) when Max > 0 ->
    Now = now_ms(),
    Key = {Ref, unit(Ip)},
    Entry = case ets:lookup(?TABLE, Key) of
                [{_, E, _}] -> E;
                [] -> make_room(), {[], none}
            end,
    {Entry1, Started} = record(Now, Entry, O, Max),
    true = ets:insert(?TABLE, {Key, Entry1, Now}),
    case Started of
        true -> block;
        false -> ok
    end;
failed(_, _, _) -> ok.

%% @doc A handshake from `Ip' timed out: counted as a failure (logged when it starts a block).
-spec timed_out(reference(), inet:ip_address() | undefined, map()) -> ok.
timed_out(_, undefined, _) -> ok;
timed_out(Ref, Ip, O) ->
    case failed(Ref, Ip, O) of
        block ->
            ?LOG_WARNING(#{what => address_blocked, peer => inet:ntoa(Ip), unit => unit_text(Ip),
                           failures => maps:get(max_auth_failures, O),
                           window_ms => maps:get(auth_failure_window, O),
                           blocked_ms => maps:get(auth_block_time, O),
                           text => "too many failed or timed-out handshakes: new connections "
                                   "from this address are refused for blocked_ms"}, ?FABRIC_LOG);
        ok -> ok
    end.

%% @doc Milliseconds `Ip' stays refused by server `Ref' (0: not blocked).
-spec blocked(reference(), inet:ip_address(), map()) -> non_neg_integer().
blocked(Ref, Ip, #{max_auth_failures := Max}) when Max > 0 ->
    case ets:lookup(?TABLE, {Ref, unit(Ip)}) of
        [{_, E, _}] -> left(now_ms(), E);
        [] -> 0
    end;
blocked(_, _, _) -> 0.

%% @doc Forget a stopped server's entries.
-spec forget(reference()) -> ok.
forget(Ref) ->
    _ = ets:match_delete(?TABLE, {{Ref, '_'}, '_', '_'}),
    ok.

%% @doc The rule: add a failure at `Now'; `{Entry, true}' when it starts a block.
-spec record(integer(), entry(), map(), pos_integer()) -> {entry(), boolean()}.
record(Now, {_, Until} = E, _, _) when is_integer(Until), Until > Now ->
    %% a handshake already under way when the block began
    {E, false};
record(Now, {Times, _}, #{auth_failure_window := Window, auth_block_time := Block}, Max) ->
    Recent = [T || T <- Times, T > Now - Window],
    case length(Recent) + 1 >= Max of
        true -> {{[], Now + Block}, true};
        false -> {{[Now | Recent], none}, false}
    end.

%% @doc Milliseconds left in the block of an entry at `Now'.
-spec left(integer(), entry()) -> non_neg_integer().
left(_, {_, none}) -> 0;
left(Now, {_, Until}) -> max(0, Until - Now).

make_room() ->
    case ets:info(?TABLE, size) >= ?MAX_ADDRESSES of
        true ->
            {Oldest, _} = ets:foldl(fun({_, _, Used}, {_, U} = Acc) when Used >= U -> Acc;
                                       ({K, _, Used}, _) -> {K, Used}
                                    end, {none, infinity}, ?TABLE),
            ets:delete(?TABLE, Oldest),
            ok;
        false -> ok
    end.

now_ms() -> erlang:monotonic_time(millisecond).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

-define(O, #{auth_failure_window => 1000, auth_block_time => 5000}).

negative_clock_test() ->
    {E1, false} = record(-50000, {[], none}, ?O, 2),
    ?assertEqual(0, left(-50000, E1)),
    {E2, true} = record(-49990, E1, ?O, 2),
    ?assertEqual(5000, left(-49990, E2)).

blocks_at_the_max_within_the_window_test() ->
    {E1, false} = record(0, {[], none}, ?O, 3),
    {E2, false} = record(10, E1, ?O, 3),
    {E3, true} = record(20, E2, ?O, 3),
    ?assertEqual(5000, left(20, E3)),
    ?assertEqual(0, left(5020, E3)),
    %% failures during the block do not extend it
    ?assertEqual({E3, false}, record(30, E3, ?O, 3)).

old_failures_leave_the_window_test() ->
    {E1, false} = record(0, {[], none}, ?O, 3),
    {E2, false} = record(500, E1, ?O, 3),
    {E3, false} = record(1200, E2, ?O, 3),
    ?assertEqual(0, left(1200, E3)),
    {_, true} = record(1300, E3, ?O, 3).

one_failure_blocks_with_max_one_test() ->
    {E, true} = record(0, {[], none}, ?O, 1),
    ?assertEqual(5000, left(0, E)).

unit_test_() ->
    [?_assertEqual({192, 0, 2, 1}, unit({192, 0, 2, 1})),
     %% ::ffff:192.0.2.1 is that IPv4 address
     ?_assertEqual({192, 0, 2, 1}, unit({0, 0, 0, 0, 0, 16#ffff, 16#c000, 16#0201})),
     %% every address of one /64 is one unit; the next /64 another
     ?_assertEqual({16#2001, 16#db8, 1, 2, 0, 0, 0, 0}, unit({16#2001, 16#db8, 1, 2, 3, 4, 5, 6})),
     ?_assertEqual(unit({16#2001, 16#db8, 1, 2, 0, 0, 0, 1}), unit({16#2001, 16#db8, 1, 2, 16#ffff, 1, 2, 3})),
     ?_assertNotEqual(unit({16#2001, 16#db8, 1, 2, 0, 0, 0, 1}), unit({16#2001, 16#db8, 1, 3, 0, 0, 0, 1})),
     ?_assertEqual({0, 0, 0, 0, 0, 0, 0, 0}, unit({0, 0, 0, 0, 0, 0, 0, 1})),
     ?_assertEqual(undefined, unit(undefined)),
     ?_assertEqual("2001:db8:1:2::/64", unit_text({16#2001, 16#db8, 1, 2, 3, 4, 5, 6})),
     ?_assertEqual("192.0.2.1", unit_text({192, 0, 2, 1}))].
-endif.
