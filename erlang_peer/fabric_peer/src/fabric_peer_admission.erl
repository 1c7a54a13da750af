%% @doc Connection admission on a server (README "Security"): an unauthenticated attacker
%% cannot exhaust a server's connections nor lock legitimate clients out.
%%
%% A connection is *pending* from its accept until its handshake succeeds. Limits, checked
%% by the acceptor for every accepted socket before a connection process starts:
%% - `max_pending_per_address' pending connections from one IP address (an IPv6 address
%%   counts as its /64, `fabric_peer_throttle:unit/1'): beyond, a pending
%%   connection *of that address* is evicted (closed) to make room. Sockets held open
%%   without a word cost their sender its own attempts, not other clients.
%% - `max_pending' pending connections in all: beyond, a pending connection is evicted. A
%%   new client always gets its chance: refusing the newest instead would let an attacker
%%   who keeps the table full lock everyone out.
%% - `max_connections' connections in all (pending, authenticated and detached sessions):
%%   beyond, a pending connection is evicted; when none is pending, the new socket is
%%   closed.
%% The one evicted is the oldest that has sent nothing yet, else the oldest that has not
%% started reading its socket (its first bytes may wait unread in the kernel), else the
%% oldest: a real client sends its hello at once, so idle sockets from its address evict
%% each other, never it in the middle of its handshake (as the Python server does). Sent
%% means bytes the runtime read from the socket (`inet:getstat/2' `recv_oct', asked only
%% when a limit is full; nothing is measured once a connection is authenticated).
%% A pending connection also ends at `handshake_timeout', and that timeout is counted by
%% the per-address throttle (`fabric_peer_throttle') like a failed authentication.
%% Every eviction and refusal is logged once, with its reason.
%%
%% The pending connections live in one public ETS table per server (created by
%% `fabric_peer_listener_sup', which outlives its acceptors and connections), keyed by the
%% connection's pid, holding `{Pid, Ip, AcceptedAt, Socket}' (`Socket' `{Transport, S}'
%% once the connection reads it, `reading/3'; `undefined' before). A connection leaves it
%% when it is authenticated (`authenticated/1'); entries of ended processes are pruned at
%% each admission.
-module(fabric_peer_admission).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([new_table/0, admit/3, pending/3, reading/3, authenticated/1]).

%% @doc The pending table of a new server.
-spec new_table() -> ets:tid().
new_table() -> ets:new(fabric_peer_pending, [set, public, {write_concurrency, true}]).

%% @doc Decide on a socket from `Ip' before its connection process starts: `ok' (room was
%% made by evicting what had to be) or `refuse' (`max_connections' and nothing pending).
-spec admit(map(), inet:ip_address() | undefined, non_neg_integer()) -> ok | refuse.
admit(#{admission := Tab} = O, Ip, Connections) ->
    Pending = live(Tab),
    {Evict, Verdict} = plan(Pending, Ip, Connections, O, fun spoke/1),
    [evict(Tab, P, PIp, Why) || {P, PIp, Why} <- Evict],
    case Verdict of
        refuse ->
            ?LOG_WARNING(#{what => connection_refused, peer => ip_text(Ip),
                           reason => max_connections, max_connections => maps:get(max_connections, O),
                           text => "max_connections reached and none is waiting for "
                                   "authentication"}, ?FABRIC_LOG);
        ok -> ok
    end,
    Verdict;
admit(_, _, _) -> ok.

%% @doc Record a started connection as pending.
-spec pending(map(), pid(), inet:ip_address() | undefined) -> ok.
pending(#{admission := Tab}, Pid, Ip) ->
    true = ets:insert(Tab, {Pid, Ip, erlang:monotonic_time(), undefined}),
    ok;
pending(_, _, _) -> ok.

%% @doc The calling (pending) connection starts reading socket `S' of transport `T': from
%% now on, whether it has sent anything is read from the socket.
-spec reading(map(), fabric_peer_transport:transport(), fabric_peer_transport:socket()) -> ok.
reading(#{admission := Tab}, T, S) ->
    _ = ets:update_element(Tab, self(), {4, {T, S}}),
    ok;
reading(_, _, _) -> ok.

%% Has this pending connection sent anything? `unknown' before it reads its socket.
spoke({_, _, _, undefined}) -> unknown;
spoke({_, _, _, {T, S}}) -> fabric_peer_transport:spoke(T, S).

%% @doc The calling connection has authenticated: it is no longer pending.
-spec authenticated(map()) -> ok.
authenticated(#{admission := Tab}) ->
    ets:delete(Tab, self()),
    ok;
authenticated(_) -> ok.

%% @doc The rule, as a pure function: which pending connections (`{Pid, Ip, AcceptedAt, _}')
%% to evict, and with which reason, for a new one from `Ip' when the server holds
%% `Connections' connections; and whether the new one is then admitted. `Spoke' says whether
%% a pending connection has sent anything (`true', `false' or `unknown'), asked only of the
%% candidates of a full limit.
-spec plan([{pid(), term(), integer(), term()}], term(), non_neg_integer(), map(),
           fun((tuple()) -> boolean() | unknown)) -> {[{pid(), term(), atom()}], ok | refuse}.
plan(Pending0, Ip, Connections, #{max_pending_per_address := PerAddr, max_pending := MaxPending,
                                  max_connections := MaxConns}, Spoke) ->
    Pending = lists:keysort(3, Pending0),
    Unit = fabric_peer_throttle:unit(Ip),
    Same = [P || {_, PIp, _, _} = P <- Pending, fabric_peer_throttle:unit(PIp) =:= Unit],
    E1 = victims(length(Same) - PerAddr + 1, Same, max_pending_per_address, Spoke),
    Rest1 = drop(E1, Pending),
    E2 = victims(length(Rest1) - MaxPending + 1, Rest1, max_pending, Spoke),
    Rest2 = drop(E2, Rest1),
    Conns = Connections - length(E1) - length(E2),
    {E3, Verdict} = case Conns >= MaxConns of
                        false -> {[], ok};
                        true when Rest2 =:= [] -> {[], refuse};
                        true -> {victims(Conns - MaxConns + 1, Rest2, max_connections, Spoke), ok}
                    end,
    {E1 ++ E2 ++ E3, Verdict}.

%% The N to evict of List (oldest first): silent ones first, then those not reading yet,
%% then those that spoke, the oldest first within each (keysort is stable).
victims(N, List, Why, Spoke) when N > 0 ->
    Ranked = lists:keysort(1, [{rank(Spoke(E)), E} || E <- List]),
    [{P, PIp, Why} || {_, {P, PIp, _, _}} <- lists:sublist(Ranked, N)];
victims(_, _, _, _) -> [].

rank(false) -> 0;
rank(unknown) -> 1;
rank(true) -> 2.

drop(Evicted, List) -> [E || {P, _, _, _} = E <- List, not lists:keymember(P, 1, Evicted)].

live(Tab) ->
    lists:filter(fun({P, _, _, _}) ->
                         is_process_alive(P) orelse (ets:delete(Tab, P) andalso false)
                 end, ets:tab2list(Tab)).

evict(Tab, Pid, Ip, Why) ->
    ets:delete(Tab, Pid),
    ?LOG_WARNING(#{what => unauthenticated_connection_evicted, peer => ip_text(Ip), reason => Why,
                   text => "closed to admit a new connection"}, ?FABRIC_LOG),
    exit(Pid, kill).

ip_text(undefined) -> "unknown";
ip_text(Ip) -> inet:ntoa(Ip).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

-define(O, #{max_pending_per_address => 2, max_pending => 3, max_connections => 5}).

p(N, Ip) -> {pid(N), Ip, N, undefined}.

pid(N) -> list_to_pid("<0.0." ++ integer_to_list(N) ++ ">").

%% every pending connection has spoken (the rule is then "the oldest")
plan(L, Ip, Conns, O) -> plan(L, Ip, Conns, O, fun(_) -> true end).

%% the connections numbered in Spoken have sent something, the others nothing
spoken(L, Ip, Conns, O, Spoken) ->
    plan(L, Ip, Conns, O, fun({_, _, N, _}) -> lists:member(N, Spoken) end).

room_test() ->
    ?assertEqual({[], ok}, plan([p(1, a)], a, 1, ?O)).

per_address_evicts_that_address_oldest_test() ->
    L = [p(3, b), p(1, a), p(2, a)],
    {E, ok} = plan(L, a, 3, ?O),
    ?assertEqual([{pid(1), a, max_pending_per_address}], E).

full_table_evicts_the_oldest_of_all_test() ->
    L = [p(5, c), p(4, b), p(6, a)],
    {E, ok} = plan(L, d, 3, ?O),
    ?assertEqual([{pid(4), b, max_pending}], E).

%% a client that sent its hello is not evicted while a silent one of its address is there
per_address_evicts_a_silent_one_first_test() ->
    L = [p(1, a), p(2, a)],
    ?assertEqual({[{pid(2), a, max_pending_per_address}], ok}, spoken(L, a, 2, ?O, [1])),
    %% all spoke, or all silent: the oldest
    ?assertEqual({[{pid(1), a, max_pending_per_address}], ok}, spoken(L, a, 2, ?O, [1, 2])),
    ?assertEqual({[{pid(1), a, max_pending_per_address}], ok}, spoken(L, a, 2, ?O, [])).

full_table_evicts_a_silent_one_first_test() ->
    L = [p(4, b), p(5, c), p(6, a)],
    ?assertEqual({[{pid(6), a, max_pending}], ok}, spoken(L, d, 3, ?O, [4, 5])).

max_connections_evicts_a_silent_one_first_test() ->
    L = [p(1, b), p(2, c)],
    ?assertEqual({[{pid(2), c, max_connections}], ok}, spoken(L, a, 5, ?O, [1])).

%% one that has not read its socket yet may have its hello waiting: after the silent ones,
%% before those that spoke
not_reading_yet_comes_between_test() ->
    L = [p(1, a), p(2, a)],
    Rank = fun(Of) -> fun({_, _, N, _}) -> maps:get(N, Of) end end,
    ?assertEqual({[{pid(2), a, max_pending_per_address}], ok},
                 plan(L, a, 2, ?O, Rank(#{1 => unknown, 2 => false}))),
    ?assertEqual({[{pid(1), a, max_pending_per_address}], ok},
                 plan(L, a, 2, ?O, Rank(#{1 => unknown, 2 => true}))).

%% IPv6: the addresses of one /64 share the per-address limit, another /64 does not
per_address_counts_an_ipv6_slash_64_test() ->
    A1 = {16#2001, 16#db8, 0, 1, 0, 0, 0, 1},
    A2 = {16#2001, 16#db8, 0, 1, 0, 0, 0, 2},
    A3 = {16#2001, 16#db8, 0, 1, 16#abcd, 0, 0, 3},
    Other = {16#2001, 16#db8, 0, 2, 0, 0, 0, 1},
    L = [p(1, A1), p(2, A2)],
    ?assertEqual({[{pid(1), A1, max_pending_per_address}], ok}, plan(L, A3, 2, ?O)),
    ?assertEqual({[], ok}, plan(L, Other, 2, ?O)).

%% Spoke is asked only when a limit is full
spoke_not_asked_with_room_test() ->
    ?assertEqual({[], ok}, plan([p(1, a)], a, 1, ?O, fun(_) -> error(asked) end)).

max_connections_test_() ->
    [%% full of authenticated connections: the newest is refused
     ?_assertEqual({[], refuse}, plan([], a, 5, ?O)),
     %% a pending one makes room
     ?_assertEqual({[{pid(1), b, max_connections}], ok}, plan([p(1, b)], a, 5, ?O)),
     %% an eviction for another limit already made room
     ?_assertMatch({[_], ok}, plan([p(1, a), p(2, a)], a, 5, ?O))].
-endif.
