#!/usr/bin/env escript
%%! -noshell
%% How long an exported process's death takes to reach the peer, with 1 and 1,000 live
%% proxies on its connection (docs/protocol.md 12.6 "Ordering": the DEAD waits for a barrier
%% through every live proxy of the connection). Printed, not asserted.
%%
%%     escript bench/erl/dead_order_timing.escript erlang_peer/_build/default/lib/fabric_peer/ebin
%%
%% One VM, a fabric_peer server and a client connected to it on 127.0.0.1. A process X of
%% the client is exported to the server (it sends its pid to a server process, which gets
%% the server's proxy PX for it); X ends; the time is from X's end to the DOWN of PX at
%% the server (the client's DEAD written, read and carried out). The client connection's
%% live proxies are proxies for idle processes of the server, made by receiving their pids.
-mode(compile).

main([Ebin]) ->
    true = code:add_patha(Ebin),
    {ok, _} = application:ensure_all_started(fabric_peer),
    logger:set_primary_config(level, error),
    Bench = self(),
    Holder = spawn(fun() -> holder(Bench) end),
    true = register(dead_order_holder, Holder),
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{allowed => [dead_order_holder]}),
    Rounds = 300,
    Results = [begin
                   {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(Srv), "secret", #{}),
                   PH = fabric_peer:whereis(C, dead_order_holder),
                   Idle = proxies(PH, N),
                   Us = [death(PH) || _ <- lists:seq(1, Rounds)],
                   #{proxies := Live} = fabric_peer:info(C),
                   fabric_peer:close(C),
                   [exit(P, kill) || P <- Idle],
                   {N, Live, stats(Us)}
               end || N <- [0, 1000]],
    [io:format("~b live proxies on the connection: export death to DOWN at the peer, "
               "median ~b us, p90 ~b us, mean ~b us (~b deaths)~n",
               [Live, Med, P90, Mean, Rounds]) || {_, Live, {Med, P90, Mean}} <- Results],
    fabric_peer:stop_server(Srv);
main(_) ->
    io:format("usage: dead_order_timing.escript FABRIC_PEER_EBIN~n"),
    halt(1).

%% The server's holder: `{pids, From, N}' -> N idle processes' pids to From; `{watch, PX}'
%% (PX: the server's proxy of a client process) -> PX to the bench process.
holder(Bench) ->
    receive
        {pids, From, N} ->
            From ! {idle, [spawn(fun() -> receive stop -> ok end end) || _ <- lists:seq(1, N)]};
        {watch, PX} -> Bench ! {watching, PX}
    end,
    holder(Bench).

%% N live proxies on the client connection (the one of the holder's proxy PH makes N+1).
proxies(PH, N) ->
    PH ! {pids, self(), N},
    receive {idle, Ps} -> Ps after 10000 -> error(no_pids) end.

%% One exported process's death, in microseconds from its end to the DOWN of its proxy at
%% the server.
death(PH) ->
    X = spawn(fun() -> PH ! {watch, self()}, receive stop -> ok end end),
    PX = receive {watching, P} -> P after 5000 -> error(no_watch) end,
    Ref = monitor(process, PX),
    XRef = monitor(process, X),
    X ! stop,
    receive {'DOWN', XRef, process, X, _} -> ok end,
    T0 = erlang:monotonic_time(microsecond),
    receive {'DOWN', Ref, process, PX, _} -> ok after 5000 -> error(no_down) end,
    erlang:monotonic_time(microsecond) - T0.

stats(Us) ->
    S = lists:sort(Us),
    N = length(S),
    {lists:nth(N div 2 + 1, S), lists:nth(max(1, (N * 9) div 10), S), lists:sum(S) div N}.
