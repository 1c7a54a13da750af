%% Sessions and reconnection (docs/protocol.md section 7): proxies survive a reconnect,
%% notices and messages produced while disconnected are delivered after the resume, an
%% expired session ends the proxies with noconnection, legacy connections have no sessions.
-module(fabric_peer_session_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

all() -> [resume_keeps_proxies, dead_while_disconnected_delivered, queued_messages_sent_after_resume,
          expired_session_gives_noconnection, legacy_reconnect_gives_noconnection,
          reconnects_after_server_restart, no_reconnect_option, backoff_is_capped,
          auth_failure_on_reconnect_stops].

init_per_suite(Config) -> fabric_peer_test_lib:init_suite(Config).

end_per_suite(Config) -> Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    fabric_peer_test_lib:start_server("secret", #{allow_legacy_auth => true, session_timeout => 1500},
                                      Config).

end_per_testcase(_, Config) -> fabric_peer_test_lib:stop_server(Config).

echo(Config) ->
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "echo",
                                              fun Loop() -> receive {F, M} -> F ! {self(), M}, Loop() end end),
    {Name, Pid}.

connect(Config, Opts) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", Opts),
    C.

%% Restart a server on the port of one that was stopped. A client reconnecting in a loop can,
%% rarely, connect to itself on that port (TCP simultaneous open on loopback when its
%% ephemeral source port is the target port) and hold it for a moment: try again then.
restart_server(Port, Secret, Opts) -> restart_server(Port, Secret, Opts, 50).

restart_server(Port, Secret, Opts, Tries) ->
    case fabric_peer:start_server(Port, Secret, Opts) of
        {error, Why} when (Why =:= eaddrinuse orelse Why =:= {listen_failed, eaddrinuse}),
                          Tries > 0 ->
            timer:sleep(100),
            restart_server(Port, Secret, Opts, Tries - 1);
        Result -> Result
    end.

wait_state(C, State) ->
    true = fabric_peer_test_lib:wait_until(fun() -> maps:get(state, fabric_peer:info(C)) =:= State end).

%% After a dropped connection the client resumes: same proxy, same ids both ways.
resume_keeps_proxies(Config) ->
    {Name, _} = echo(Config),
    C = connect(Config, #{reconnect_min => 50}),
    P = fabric_peer:whereis(C, Name),
    P ! {self(), one},
    receive {P, one} -> ok after 3000 -> ct:fail(no_reply) end,
    ok = fabric_peer:disconnect(C),
    wait_state(C, established),
    #{connects := 2, proxies := 1} = fabric_peer:info(C),
    true = is_process_alive(P),
    P ! {self(), two},
    receive {P, two} -> ok after 3000 -> ct:fail(no_reply_after_resume) end,
    P = fabric_peer:whereis(C, Name),
    fabric_peer:close(C).

%% A remote death during the disconnection reaches the proxy (with its reason) after resume.
dead_while_disconnected_delivered(Config) ->
    {Name, Pid} = echo(Config),
    C = connect(Config, #{reconnect_min => 600}),
    P = fabric_peer:whereis(C, Name),
    Ref = monitor(process, P),
    ok = fabric_peer:disconnect(C),
    exit(Pid, {gone, while_away}),
    receive {'DOWN', Ref, _, _, R0} -> ct:fail({too_early, R0}) after 200 -> ok end,
    receive {'DOWN', Ref, process, P, {gone, while_away}} -> ok;
            {'DOWN', Ref, process, P, Other} -> ct:fail({wrong_reason, Other, fabric_peer:info(C)})
    after 5000 -> ct:fail({no_down_after_resume, fabric_peer:info(C)}) end,
    fabric_peer:close(C).

%% Messages sent to a proxy while reconnecting are queued and delivered after the resume.
queued_messages_sent_after_resume(Config) ->
    {Name, _} = echo(Config),
    C = connect(Config, #{reconnect_min => 400}),
    P = fabric_peer:whereis(C, Name),
    ok = fabric_peer:disconnect(C),
    ok = fabric_peer:send(P, {self(), queued1}),
    P ! {self(), queued2},
    receive {P, queued1} -> ok after 5000 -> ct:fail(queued1_lost) end,
    receive {P, queued2} -> ok after 5000 -> ct:fail(queued2_lost) end,
    %% with max_queue => 0 sends are refused while disconnected
    C2 = connect(Config, #{reconnect_min => 400, max_queue => 0}),
    P2 = fabric_peer:whereis(C2, Name),
    ok = fabric_peer:disconnect(C2),
    {error, not_connected} = fabric_peer:send(P2, {self(), refused}),
    fabric_peer:close(C),
    fabric_peer:close(C2).

%% Away longer than session_timeout: the session is gone, proxies end with noconnection
%% (on both sides), and the client starts a fresh session.
expired_session_gives_noconnection(Config) ->
    %% the server keeps sessions 300 ms; the client comes back after 500-1000 ms
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{session_timeout => 300}),
    {Name, _} = fabric_peer_test_lib:remote(Srv, "echo",
                                            fun Loop() -> receive {F, M} -> F ! {self(), M}, Loop() end end),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(Srv), "secret",
                                  #{reconnect_min => 1000, reconnect_max => 1000}),
    P = fabric_peer:whereis(C, Name),
    P ! {self(), hi},
    receive {P, hi} -> ok after 3000 -> ct:fail(no_reply) end,
    Ref = monitor(process, P),
    ok = fabric_peer:disconnect(C),
    receive {'DOWN', Ref, process, P, noconnection} -> ok after 6000 -> ct:fail(no_noconnection) end,
    wait_state(C, established),
    P2 = fabric_peer:whereis(C, Name),
    true = P2 =/= P,
    P2 ! {self(), fresh},
    receive {P2, fresh} -> ok after 3000 -> ct:fail(no_reply) end,
    fabric_peer:close(C),
    fabric_peer:stop_server(Srv),
    Config.

%% Legacy connections have no session: a drop ends the proxies with noconnection, then the
%% client reconnects.
legacy_reconnect_gives_noconnection(Config) ->
    {Name, _} = echo(Config),
    C = connect(Config, #{mode => legacy, allow_legacy_auth => true, reconnect_min => 50}),
    ok = fabric_peer:send({C, Name}, {self(), hi}),
    P = receive {P0, hi} -> P0 after 3000 -> ct:fail(no_reply) end,
    Ref = monitor(process, P),
    ok = fabric_peer:disconnect(C),
    receive {'DOWN', Ref, process, P, noconnection} -> ok after 3000 -> ct:fail(no_down) end,
    wait_state(C, established),
    ok = fabric_peer:send({C, Name}, {self(), again}),
    receive {_, again} -> ok after 3000 -> ct:fail(no_reply) end,
    fabric_peer:close(C).

%% The server goes away and comes back on the same port: the client reconnects on its own.
reconnects_after_server_restart(Config) ->
    {Name, _} = echo(Config),
    Port = ?config(port, Config),
    C = connect(Config, #{reconnect_min => 50, reconnect_max => 200}),
    fabric_peer:stop_server(?config(server, Config)),
    wait_state(C, disconnected),
    {ok, S2} = restart_server(Port, "secret", #{allowed => [Name]}),
    wait_state(C, established),
    true = is_pid(fabric_peer:whereis(C, Name)),
    fabric_peer:close(C),
    fabric_peer:stop_server(S2).

%% reconnect => false: a lost connection ends the client process.
no_reconnect_option(Config) ->
    C = connect(Config, #{reconnect => false}),
    Ref = monitor(process, C),
    ok = fabric_peer:disconnect(C),
    receive {'DOWN', Ref, process, C, _} -> ok after 3000 -> ct:fail(still_alive) end.

%% After many failed attempts the client still reconnects (the delays themselves are checked
%% by the EUnit tests of fabric_peer_backoff, without timing).
backoff_is_capped(Config) ->
    Port = ?config(port, Config),
    C = connect(Config, #{reconnect_min => 20, reconnect_max => 80}),
    fabric_peer:stop_server(?config(server, Config)),
    timer:sleep(1000),
    #{state := State} = fabric_peer:info(C),
    true = lists:member(State, [disconnected, connecting]),
    {ok, S2} = restart_server(Port, "secret", #{}),
    wait_state(C, established),
    fabric_peer:close(C),
    fabric_peer:stop_server(S2).

%% The server comes back with another secret: the client stops retrying, its proxies end
%% with noconnection, and the client process ends.
auth_failure_on_reconnect_stops(Config) ->
    {Name, _} = echo(Config),
    Port = ?config(port, Config),
    C = connect(Config, #{reconnect_min => 20, reconnect_max => 50}),
    P = fabric_peer:whereis(C, Name),
    ProxyRef = monitor(process, P),
    ConnRef = monitor(process, C),
    fabric_peer:stop_server(?config(server, Config)),
    {ok, S2} = restart_server(Port, "another secret", #{}),
    receive {'DOWN', ProxyRef, process, P, noconnection} -> ok
    after 5000 -> ct:fail(proxy_alive) end,
    receive {'DOWN', ConnRef, process, C, _} -> ok
    after 5000 -> ct:fail({still_retrying, fabric_peer:info(C)}) end,
    #{connections := 0} = fabric_peer:info(S2),
    fabric_peer:stop_server(S2).
