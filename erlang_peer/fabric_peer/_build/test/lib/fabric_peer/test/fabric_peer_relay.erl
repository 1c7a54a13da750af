%% A TCP relay on 127.0.0.1 for tests: it forwards every connection accepted on its own
%% port to a target port, and can cut all the connections going through it, now or at
%% random intervals (the chaos of the acks suite). Both sockets of a cut connection are
%% closed at once, whatever was in flight: bytes written to the relay and not yet forwarded
%% are lost, as in a network failure.
-module(fabric_peer_relay).

-export([start/1, port/1, cut/1, cut_every/3, cuts/1, stop/1]).

%% @doc Start a relay to `TargetPort'; its own port is `port/1'.
start(TargetPort) ->
    Self = self(),
    Pid = spawn(fun() -> init(Self, TargetPort) end),
    receive {Pid, ready} -> {ok, Pid} after 5000 -> error(relay_not_started) end.

port(R) -> call(R, port).
cut(R) -> call(R, cut).
cuts(R) -> call(R, cuts).
%% Cut every MinMs..MaxMs (uniform), until stop/1; `cut_every(R, 0, 0)' stops cutting.
cut_every(R, MinMs, MaxMs) -> call(R, {cut_every, MinMs, MaxMs}).
stop(R) -> call(R, stop).

call(R, Req) ->
    Ref = monitor(process, R),
    R ! {Req, self(), Ref},
    receive
        {Ref, Reply} -> demonitor(Ref, [flush]), Reply;
        {'DOWN', Ref, _, _, Why} -> error({relay_down, Why})
    after 5000 -> error(relay_timeout)
    end.

init(Parent, Target) ->
    {ok, L} = gen_tcp:listen(0, [binary, {ip, {127, 0, 0, 1}}, {active, false}, {reuseaddr, true},
                                 {backlog, 64}]),
    {ok, Port} = inet:port(L),
    Self = self(),
    spawn_link(fun() -> accept(L, Target, Self) end),
    Parent ! {self(), ready},
    loop(#{l => L, port => Port, pipes => [], cuts => 0, every => none}).

loop(#{pipes := Pipes} = S) ->
    receive
        {pipe, Pid} -> loop(S#{pipes => [Pid | Pipes]});
        {port, From, Ref} -> From ! {Ref, maps:get(port, S)}, loop(S);
        {cuts, From, Ref} -> From ! {Ref, maps:get(cuts, S)}, loop(S);
        {cut, From, Ref} -> From ! {Ref, ok}, loop(do_cut(S));
        {{cut_every, Min, Max}, From, Ref} ->
            From ! {Ref, ok},
            S1 = S#{every => case Max of 0 -> none; _ -> {Min, Max} end},
            schedule(S1),
            loop(S1);
        tick ->
            case maps:get(every, S) of
                none -> loop(S);
                _ -> S1 = do_cut(S), schedule(S1), loop(S1)
            end;
        {stop, From, Ref} ->
            _ = do_cut(S),
            From ! {Ref, ok}
    end.

schedule(#{every := none}) -> ok;
schedule(#{every := {Min, Max}}) ->
    erlang:send_after(Min + rand:uniform(max(1, Max - Min + 1)) - 1, self(), tick).

do_cut(#{pipes := Pipes, cuts := N} = S) ->
    [exit(P, kill) || P <- Pipes],
    S#{pipes => [], cuts => N + min(1, length(Pipes))}.

accept(L, Target, Ctl) ->
    case gen_tcp:accept(L) of
        {ok, A} ->
            case gen_tcp:connect({127, 0, 0, 1}, Target, [binary, {active, false}, {nodelay, true}]) of
                {ok, B} ->
                    Pipe = spawn(fun() -> receive go -> pipe(A, B) end end),
                    ok = gen_tcp:controlling_process(A, Pipe),
                    ok = gen_tcp:controlling_process(B, Pipe),
                    Ctl ! {pipe, Pipe},
                    Pipe ! go;
                {error, _} -> gen_tcp:close(A)
            end,
            accept(L, Target, Ctl);
        {error, _} -> ok
    end.

pipe(A, B) ->
    ok = inet:setopts(A, [{active, once}, {nodelay, true}]),
    ok = inet:setopts(B, [{active, once}]),
    pipe_loop(A, B).

pipe_loop(A, B) ->
    receive
        {tcp, A, Data} -> ok = forward(B, Data), ok = inet:setopts(A, [{active, once}]), pipe_loop(A, B);
        {tcp, B, Data} -> ok = forward(A, Data), ok = inet:setopts(B, [{active, once}]), pipe_loop(A, B);
        {tcp_closed, _} -> gen_tcp:close(A), gen_tcp:close(B);
        {tcp_error, _, _} -> gen_tcp:close(A), gen_tcp:close(B)
    end.

forward(S, Data) ->
    case gen_tcp:send(S, Data) of
        ok -> ok;
        {error, _} -> exit(normal)
    end.
