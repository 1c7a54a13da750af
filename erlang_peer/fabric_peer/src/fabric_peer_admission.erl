%% @doc Connection admission on a server (README "Security"): an unauthenticated attacker
%% cannot exhaust a server's connections nor lock legitimate clients out.
%%
%% A connection is *pending* from its accept until its handshake succeeds. Limits, checked
%% by the acceptor for every accepted socket before a connection process starts:
%% - `max_pending_per_address' pending connections from one IP address: beyond, the oldest
%%   pending connection *of that address* is evicted (closed) to make room. Sockets held
%%   open without a word cost their sender its own oldest attempts, not other clients.
%% - `max_pending' pending connections in all: beyond, the oldest pending connection is
%%   evicted. A new client always gets its chance: refusing the newest instead would let
%%   an attacker who keeps the table full lock everyone out.
%% - `max_connections' connections in all (pending, authenticated and detached sessions):
%%   beyond, the oldest pending connection is evicted; when none is pending, the new socket
%%   is closed.
%% A pending connection also ends at `handshake_timeout', and that timeout is counted by
%% the per-address throttle (`fabric_peer_throttle') like a failed authentication.
%% Every eviction and refusal is logged once, with its reason.
%%
%% The pending connections live in one public ETS table per server (created by
%% `fabric_peer_listener_sup', which outlives its acceptors and connections), keyed by the
%% connection's pid, holding `{Pid, Ip, AcceptedAt}'. A connection leaves it when it is
%% authenticated (`authenticated/1'); entries of ended processes are pruned at each admission.
-module(fabric_peer_admission).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([new_table/0, admit/3, pending/3, authenticated/1]).

%% @doc The pending table of a new server.
-spec new_table() -> ets:tid().
new_table() -> ets:new(fabric_peer_pending, [set, public, {write_concurrency, true}]).

%% @doc Decide on a socket from `Ip' before its connection process starts: `ok' (room was
%% made by evicting what had to be) or `refuse' (`max_connections' and nothing pending).
-spec admit(map(), inet:ip_address() | undefined, non_neg_integer()) -> ok | refuse.
admit(#{admission := Tab} = O, Ip, Connections) ->
    Pending = live(Tab),
    {Evict, Verdict} = plan(Pending, Ip, Connections, O),
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
    true = ets:insert(Tab, {Pid, Ip, erlang:monotonic_time()}),
    ok;
pending(_, _, _) -> ok.

%% @doc The calling connection has authenticated: it is no longer pending.
-spec authenticated(map()) -> ok.
authenticated(#{admission := Tab}) ->
    ets:delete(Tab, self()),
    ok;
authenticated(_) -> ok.

%% @doc The rule, as a pure function: which pending connections (`{Pid, Ip, AcceptedAt}')
%% to evict, and with which reason, for a new one from `Ip' when the server holds
%% `Connections' connections; and whether the new one is then admitted.
-spec plan([{pid(), term(), integer()}], term(), non_neg_integer(), map()) ->
          {[{pid(), term(), atom()}], ok | refuse}.
plan(Pending0, Ip, Connections, #{max_pending_per_address := PerAddr, max_pending := MaxPending,
                                  max_connections := MaxConns}) ->
    Pending = lists:keysort(3, Pending0),
    Same = [P || {_, PIp, _} = P <- Pending, PIp =:= Ip],
    E1 = oldest(length(Same) - PerAddr + 1, Same, max_pending_per_address),
    Rest1 = drop(E1, Pending),
    E2 = oldest(length(Rest1) - MaxPending + 1, Rest1, max_pending),
    Rest2 = drop(E2, Rest1),
    Conns = Connections - length(E1) - length(E2),
    {E3, Verdict} = case Conns >= MaxConns of
                        false -> {[], ok};
                        true when Rest2 =:= [] -> {[], refuse};
                        true -> {oldest(Conns - MaxConns + 1, Rest2, max_connections), ok}
                    end,
    {E1 ++ E2 ++ E3, Verdict}.

oldest(N, List, Why) when N > 0 ->
    [{P, PIp, Why} || {P, PIp, _} <- lists:sublist(List, N)];
oldest(_, _, _) -> [].

drop(Evicted, List) -> [E || {P, _, _} = E <- List, not lists:keymember(P, 1, Evicted)].

live(Tab) ->
    lists:filter(fun({P, _, _}) ->
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

p(N, Ip) -> {list_to_pid("<0.0." ++ integer_to_list(N) ++ ">"), Ip, N}.

room_test() ->
    ?assertEqual({[], ok}, plan([p(1, a)], a, 1, ?O)).

per_address_evicts_that_address_oldest_test() ->
    L = [p(3, b), p(1, a), p(2, a)],
    {E, ok} = plan(L, a, 3, ?O),
    ?assertEqual([{element(1, p(1, a)), a, max_pending_per_address}], E).

full_table_evicts_the_oldest_of_all_test() ->
    L = [p(5, c), p(4, b), p(6, a)],
    {E, ok} = plan(L, d, 3, ?O),
    ?assertEqual([{element(1, p(4, b)), b, max_pending}], E).

max_connections_test_() ->
    [%% full of authenticated connections: the newest is refused
     ?_assertEqual({[], refuse}, plan([], a, 5, ?O)),
     %% a pending one makes room
     ?_assertEqual({[{element(1, p(1, b)), b, max_connections}], ok}, plan([p(1, b)], a, 5, ?O)),
     %% an eviction for another limit already made room
     ?_assertMatch({[_], ok}, plan([p(1, a), p(2, a)], a, 5, ?O))].
-endif.
