%% @doc An exported process's last messages before its DEAD notice (docs/protocol.md 12.6,
%% "Ordering"), without I/O.
%%
%% A local process X that does `Proxy ! M' and ends must be seen by the peer as M, then
%% ``{'DEAD', {pr, Id}, Reason}'' (a monitor there gets the message before the DOWN). But M
%% goes through the proxy while X's end reaches the connection directly (its monitor), so
%% the DOWN can be handled while M still waits in the proxy's mailbox. The DEAD is therefore
%% not written at the DOWN: the connection sends a barrier `{barrier, N}' to every live
%% proxy of the session (no frame says which ones X used), and each proxy answers it after
%% handing the connection all that came before it: its mailbox up to the barrier and what
%% waited in the proxy for allowance (`fabric_peer_proxy'). Both go from the proxy to the
%% connection, so they arrive in that order. When every barriered proxy has answered or
%% ended (its DOWN), X's messages have been carried out, written or waiting in the pending
%% queue for credit or outbox room (which a DEAD does not wait for, 12.6), and the DEAD is
%% written. The cost: one message to and one from each live proxy per death; with no live
%% proxy (and no DEAD waiting) the DEAD is written at once.
%%
%% Deaths in flight each have their barrier, a number never reused on the connection (an
%% answer from a proxy of an ended session matches none); their DEADs are written in the
%% order of the DOWNs, a later one never before an earlier one. While a DEAD waits its
%% process is buried already, so a frame naming it gives its old id and does not repeat the
%% DEAD (`pending/2', for `fabric_peer_payload:pid_id/2'): the DEAD comes after the frame.
%% A DEAD is remembered for a resume when it is written (`fabric_peer_session:dead_written/2').
%% When the session ends what waits is dropped (its ids are void); when the connection
%% ends it is written at once (`flush/1'), as it was before barriers.
%%
%% The functions on `order()' are the pure part; those on the protocol state carry out
%% what they decide (barrier actions, the DEAD frames).
-module(fabric_peer_dead_order).

-include("fabric_peer_protocol.hrl").

%% the order of DEADs (pure)
-export([new/0, add/3, answer/3, gone/2, waiting/2, take_all/1, clear/1]).
%% (the pure part is what the EUnit tests drive; the protocol uses the functions below)
-ignore_xref([add/3, answer/3, gone/2, waiting/2, take_all/1, clear/1]).
%% on the protocol state
-export([died/2, passed/3, proxy_gone/2, pending/2, session_end/1, flush/1]).

-export_type([order/0]).

-import(fabric_peer_payload, [act/2]).

-record(order, {
          %% the next barrier's number
          next = 1 :: pos_integer(),
          %% the barriers of the DEADs waiting, oldest first
          q = queue:new() :: queue:queue(pos_integer()),
          %% barrier -> its DEAD and the proxies that have not answered it
          wait = #{} :: #{pos_integer() => {dead(), #{pid() => true}}},
          %% the ids whose DEAD waits -> their barrier
          ids = #{} :: #{integer() => pos_integer()}}).

-opaque order() :: #order{}.
-type dead() :: {'DEAD', {pr, integer()}, term()}.

%%% the order of DEADs

%% @doc Nothing waiting.
-spec new() -> order().
new() -> #order{}.

%% @doc The DEAD of a process that ended while `Proxies' are live: the barrier to send them
%% (`none' when there are none), and the DEADs that may be written now, in order (`Dead'
%% itself when nothing waits and there are no proxies).
-spec add(dead(), [pid()], order()) -> {pos_integer() | none, [dead()], order()}.
add(Dead, [], #order{wait = W} = O) when map_size(W) =:= 0 -> {none, [Dead], O};
add({'DEAD', {pr, Id}, _} = Dead, Proxies, #order{next = N, q = Q, wait = W, ids = Ids} = O) ->
    Set = maps:from_keys(Proxies, true),
    O1 = O#order{next = N + 1, q = queue:in(N, Q), wait = W#{N => {Dead, Set}}, ids = Ids#{Id => N}},
    {Ready, O2} = release(O1, []),
    {case Proxies of [] -> none; _ -> N end, Ready, O2}.

%% @doc Proxy `Proxy' answered barrier `N': the DEADs that may be written now, in order.
-spec answer(pid(), pos_integer(), order()) -> {[dead()], order()}.
answer(Proxy, N, #order{wait = W} = O) ->
    case W of
        #{N := {Dead, Set}} -> release(O#order{wait = W#{N := {Dead, maps:remove(Proxy, Set)}}}, []);
        _ -> {[], O}
    end.

%% @doc Proxy `Proxy' ended: it answers no barrier (what it forwarded came before its
%% DOWN). The DEADs that may be written now, in order.
-spec gone(pid(), order()) -> {[dead()], order()}.
gone(_, #order{wait = W} = O) when map_size(W) =:= 0 -> {[], O};
gone(Proxy, #order{wait = W} = O) ->
    release(O#order{wait = maps:map(fun(_, {Dead, Set}) -> {Dead, maps:remove(Proxy, Set)} end, W)}, []).

%% @doc True while the DEAD of exported id `Id' waits.
-spec waiting(integer(), order()) -> boolean().
waiting(Id, #order{ids = Ids}) -> is_map_key(Id, Ids).

%% @doc Every DEAD waiting, in order, and nothing waiting any more.
-spec take_all(order()) -> {[dead()], order()}.
take_all(#order{q = Q, wait = W} = O) ->
    {[element(1, map_get(N, W)) || N <- queue:to_list(Q)], clear(O)}.

%% @doc Nothing waiting any more (the barrier numbers go on).
-spec clear(order()) -> order().
clear(#order{next = N}) -> #order{next = N}.

%% The oldest DEADs whose proxies have all answered leave, in order.
release(#order{q = Q, wait = W, ids = Ids} = O, Acc) ->
    case queue:peek(Q) of
        {value, N} ->
            case map_get(N, W) of
                {{'DEAD', {pr, Id}, _} = Dead, Set} when map_size(Set) =:= 0 ->
                    release(O#order{q = queue:drop(Q), wait = maps:remove(N, W),
                                    ids = maps:remove(Id, Ids)}, [Dead | Acc]);
                _ -> {lists:reverse(Acc), O}
            end;
        empty -> {lists:reverse(Acc), O}
    end.

%%% on the protocol state

%% @doc An exported process ended (`fabric_peer_session:export_down/4' buried it): its
%% DEAD is written now or after the barrier sent to the live proxies.
-spec died(dead(), #p{}) -> #p{}.
died(Dead, #p{s = S, deads = O} = P) ->
    Proxies = fabric_peer_session:proxies(S),
    case add(Dead, Proxies, O) of
        {none, Ready, O1} -> write(Ready, P#p{deads = O1});
        {N, Ready, O1} ->
            P1 = lists:foldl(fun(Proxy, Acc) -> act({control, Proxy, {barrier, N}}, Acc) end,
                             P#p{deads = O1}, Proxies),
            write(Ready, P1)
    end.

%% @doc Proxy `Proxy' answered barrier `N'.
-spec passed(pid(), pos_integer(), #p{}) -> #p{}.
passed(Proxy, N, #p{deads = O} = P) ->
    {Ready, O1} = answer(Proxy, N, O),
    write(Ready, P#p{deads = O1}).

%% @doc Process `Pid' ended, possibly a proxy that a barrier waits for.
-spec proxy_gone(pid(), #p{}) -> #p{}.
proxy_gone(Pid, #p{deads = O} = P) ->
    case gone(Pid, O) of
        {[], O} -> P;
        {Ready, O1} -> write(Ready, P#p{deads = O1})
    end.

%% @doc True while the DEAD of exported id `Id' waits (it will be written).
-spec pending(integer(), #p{}) -> boolean().
pending(Id, #p{deads = O}) -> waiting(Id, O).

%% @doc The session ended: the DEADs waiting are dropped (their ids are void).
-spec session_end(#p{}) -> #p{}.
session_end(#p{deads = O} = P) -> P#p{deads = clear(O)}.

%% @doc The connection ends: the DEADs waiting are written now, in order (their messages
%% still in the proxies are reported as unsent with the proxies, 11.7).
-spec flush(#p{}) -> #p{}.
flush(#p{deads = O} = P) ->
    {Deads, O1} = take_all(O),
    write(Deads, P#p{deads = O1}).

write([], P) -> P;
write(Deads, P) ->
    lists:foldl(fun(Dead, #p{s = S} = Acc) ->
                        Acc1 = Acc#p{s = fabric_peer_session:dead_written(Dead, S)},
                        fabric_peer_commands:emit(ctrl, Dead, Acc1)
                end, P, Deads).
