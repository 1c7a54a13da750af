%% Proxies at rest and at work (issue 15): an idle proxy hibernates, costs at most 1 KiB
%% (erlang:process_info/2 `memory', the monitors included) and still does everything a
%% proxy does after it wakes; a proxy in use never hibernates between its messages.
%%
%% A proxy hibernates at the end of a 1 s period without a message (fabric_peer_proxy
%% ?IDLE_MS: after 1 to 2 s of silence); the busy case sends every 100 ms, ten times more
%% often. Hibernations are counted by tracing the calls of fabric_peer_proxy:wake/1, which
%% only erlang:hibernate/3 calls.
-module(fabric_peer_proxy_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [wait_until/1]).

all() -> [idle_proxy_hibernates_and_wakes, woken_proxy_carries_a_burst_in_order,
          hibernated_proxy_ends_with_the_real_reason, busy_proxy_does_not_hibernate,
          barrier_hands_over_what_waits].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => []}),
    [{server, S} | Config].

end_per_suite(Config) ->
    fabric_peer:stop_server(?config(server, Config)),
    Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(?config(server, Config)), "secret", #{}),
    [{conn, C} | Config].

end_per_testcase(_, Config) ->
    erlang:trace(all, false, [call]),
    erlang:trace_pattern({fabric_peer_proxy, wake, 1}, false, [local]),
    fabric_peer:close(?config(conn, Config)),
    Config.

%% A proxy at the client for a fresh echo process of the server: {From, M} -> From ! {echo, M}.
echo_proxy(Config) ->
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "echo",
                                              fun Loop() -> receive {From, M} -> From ! {echo, M}, Loop() end end),
    Proxy = fabric_peer:whereis(?config(conn, Config), Name),
    true = fabric_peer:is_proxy(Proxy),
    {Proxy, Pid}.

round_trip(Proxy, M) ->
    Proxy ! {self(), M},
    receive {echo, M} -> ok after 5000 -> ct:fail({no_echo, M}) end.

hibernated(Pid) -> erlang:process_info(Pid, current_function) =:= {current_function, {erlang, hibernate, 3}}.

memory(Pid) -> {memory, M} = erlang:process_info(Pid, memory), M.

trace_wakes(Proxy) ->
    1 = erlang:trace(Proxy, true, [call]),
    1 = erlang:trace_pattern({fabric_peer_proxy, wake, 1}, true, [local]),
    ok.

wakes(Proxy) -> wakes(Proxy, 0).
wakes(Proxy, N) ->
    receive {trace, Proxy, call, {fabric_peer_proxy, wake, _}} -> wakes(Proxy, N + 1)
    after 0 -> N
    end.

idle_proxy_hibernates_and_wakes(Config) ->
    {Proxy, _} = echo_proxy(Config),
    ok = round_trip(Proxy, first),
    Busy = memory(Proxy),
    true = wait_until(fun() -> hibernated(Proxy) end),
    Idle = memory(Proxy),
    ct:log("proxy memory: ~b bytes in use, ~b bytes hibernated", [Busy, Idle]),
    true = Idle =< 1024,
    true = Idle < Busy,
    trace_wakes(Proxy),
    ok = round_trip(Proxy, after_waking),
    1 = wakes(Proxy),
    false = hibernated(Proxy),
    %% and again: it goes back to sleep and wakes as often as it is left alone
    true = wait_until(fun() -> hibernated(Proxy) end),
    true = memory(Proxy) =< 1024,
    ok = round_trip(Proxy, twice),
    1 = wakes(Proxy),
    {comment, io_lib:format("~b B in use, ~b B hibernated", [Busy, Idle])}.

%% After waking, the proxy's flow control (the allowance and the counters shared with its
%% connection, read again from the registry) works: a burst well beyond the allowance
%% arrives complete and in order, through `!' and fabric_peer:send/2 mixed.
woken_proxy_carries_a_burst_in_order(Config) ->
    {Proxy, _} = echo_proxy(Config),
    ok = round_trip(Proxy, first),
    true = wait_until(fun() -> hibernated(Proxy) end),
    N = 3000,
    [case I rem 3 of
         0 -> ok = fabric_peer:send(Proxy, {self(), I});
         _ -> Proxy ! {self(), I}
     end || I <- lists:seq(1, N)],
    [receive {echo, I} -> ok after 10000 -> ct:fail({missing, I}) end || I <- lists:seq(1, N)],
    receive {echo, Extra} -> ct:fail({extra, Extra}) after 100 -> ok end,
    ok.

%% A DEAD arriving for a hibernated proxy ends it with the remote process's real reason,
%% seen by a local monitor and a local link.
hibernated_proxy_ends_with_the_real_reason(Config) ->
    {Proxy, Pid} = echo_proxy(Config),
    ok = round_trip(Proxy, first),
    Self = self(),
    _Linked = spawn(fun() -> process_flag(trap_exit, true), link(Proxy), Self ! linked,
                            receive {'EXIT', Proxy, R} -> Self ! {linked_saw, R} end end),
    receive linked -> ok after 5000 -> ct:fail(no_link) end,
    MRef = monitor(process, Proxy),
    true = wait_until(fun() -> hibernated(Proxy) end),
    exit(Pid, {shutdown, gone_while_proxy_slept}),
    receive {'DOWN', MRef, process, Proxy, R1} -> {shutdown, gone_while_proxy_slept} = R1
    after 5000 -> ct:fail(proxy_did_not_end)
    end,
    receive {linked_saw, R2} -> {shutdown, gone_while_proxy_slept} = R2
    after 5000 -> ct:fail(link_not_signalled)
    end,
    false = fabric_peer:is_proxy(Proxy),
    ok.

%% A proxy that gets a message every 100 ms for 3 s never hibernates (the hot path pays
%% no hibernation per message); left alone after that, it does.
busy_proxy_does_not_hibernate(Config) ->
    {Proxy, _} = echo_proxy(Config),
    trace_wakes(Proxy),
    [begin ok = round_trip(Proxy, I), timer:sleep(100) end || I <- lists:seq(1, 30)],
    0 = wakes(Proxy),
    false = hibernated(Proxy),
    true = wait_until(fun() -> hibernated(Proxy) end),
    ok = round_trip(Proxy, woken),
    1 = wakes(Proxy),
    ok.

%% A barrier (an exported process ended, fabric_peer_dead_order) is answered after all that
%% was sent to the proxy before it, what waited in it for allowance included (the
%% allowance, 512, fabric_peer_proxy); the allowance is then below 0: nothing more is
%% forwarded until the connection gave back what was handed over. This test process is
%% the proxy's connection.
barrier_hands_over_what_waits(_Config) ->
    Token = make_ref(),
    Proxy = fabric_peer_proxy:start(self(), 1, Token),
    [Proxy ! I || I <- lists:seq(1, 600)],
    ok = fabric_peer_proxy:control(Proxy, Token, {barrier, 5}),
    Forwarded = forwarded(Proxy, 5),
    Forwarded =:= lists:seq(1, 600) orelse ct:fail({forwarded, Forwarded}),
    Proxy ! late,
    ok = fabric_peer_proxy:control(Proxy, Token, {allow, 88}),
    receive {fabric_proxy_msg, Proxy, late} -> ct:fail(forwarded_beyond_its_allowance)
    after 200 -> ok
    end,
    ok = fabric_peer_proxy:control(Proxy, Token, {allow, 1}),
    receive {fabric_proxy_msg, Proxy, late} -> ok after 3000 -> ct:fail(not_forwarded) end,
    exit(Proxy, kill).

%% What the proxy forwarded before its answer to barrier N.
forwarded(Proxy, N) ->
    receive
        {fabric_proxy_msg, Proxy, M} -> [M | forwarded(Proxy, N)];
        {fabric_proxy_msgs, Proxy, Ms} -> Ms ++ forwarded(Proxy, N);
        {fabric_proxy_barrier, Proxy, N} -> []
    after 3000 -> ct:fail(no_barrier_answer)
    end.
