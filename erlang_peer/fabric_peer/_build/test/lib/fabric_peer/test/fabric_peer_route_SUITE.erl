%% Routing between clients of one erlang_peer server (docs/protocol.md 16, issue 13): one
%% server with `routing', several erlang_peer clients with node names. Each client's
%% "own" processes are registered here and reachable only through that client's `allowed'
%% names (the server allows none), so a message that arrives went C1 -> S -> C2.
-module(fabric_peer_route_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-import(fabric_peer_test_lib, [node_name/1, echo/1, close/1]).
-compile([export_all, nowarn_export_all]).

-define(T, 5000).

all() ->
    [send_by_name_and_node, confirmed_send_routed, whereis_node, nodes_list, pid_identity,
     monitors_and_links_across, exit_from_c1_reaches_c2, nodedown_then_grace,
     nodedown_by_heartbeat, predicate_refuses, duplicate_node_refused,
     legacy_client_as_c1, legacy_client_as_c2, not_supported_without_routing,
     resume_within_grace, takeover_of_a_kept_session, route_max_proxies,
     readme_example].

init_per_suite(Config) ->
    fabric_peer_test_lib:start_server("secret", #{routing => true, allow_legacy_auth => true,
                                                  route_grace => 500, route_heartbeat => 200},
                                      fabric_peer_test_lib:init_suite(Config)).

end_per_suite(Config) -> fabric_peer_test_lib:stop_server(Config).

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    Config.

end_per_testcase(_, Config) ->
    Config.

%%% helpers

%% A client with a fresh node name that allows `Allowed'.
client(Config, Prefix, Allowed) -> client(Config, Prefix, Allowed, #{}).
client(Config, Prefix, Allowed, Extra) ->
    Node = node_name(Prefix),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                  Extra#{node => Node, allowed => Allowed}),
    {C, Node}.

%%% cases

send_by_name_and_node(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, "c2_", [Svc]),
    {C1, _} = client(Config, "c1_", []),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), hello}),
    receive {got, Svc, From, hello} -> ?assert(fabric_peer:is_proxy(From)) after ?T -> error(not_routed) end,
    receive {echo, _, hello} -> ok after ?T -> error(no_echo) end,
    %% the server itself does not allow Svc: only C2 could have delivered it
    {ok, C0} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{}),
    ?assertEqual(undefined, fabric_peer:whereis(C0, Svc)),
    SvcPid ! stop,
    close([C0, C1, C2]).

confirmed_send_routed(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, "c2_", [Svc]),
    {C1, _} = client(Config, "c1_", []),
    ?assertEqual(ok, fabric_peer:send_confirmed({C1, {Svc, N2}}, {self(), confirmed})),
    receive {got, Svc, _, confirmed} -> ok after ?T -> error(not_routed) end,
    %% C2 does not allow this name: C2's answer comes back
    ?assertEqual({error, not_allowed}, fabric_peer:send_confirmed({C1, {not_there, N2}}, x)),
    ?assertEqual({error, noproc}, fabric_peer:send_confirmed({C1, {Svc, 'nobody@127.0.0.1'}}, x)),
    SvcPid ! stop,
    close([C1, C2]).

whereis_node(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, "c2_", [Svc]),
    {C1, _} = client(Config, "c1_", []),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    ?assert(is_pid(P) andalso fabric_peer:is_proxy(P) andalso P =/= SvcPid),
    P ! {self(), via_whereis},
    receive {echo, _, via_whereis} -> ok after ?T -> error(no_echo) end,
    ?assertEqual(P, fabric_peer:whereis(C1, {Svc, N2})),
    ?assertEqual(undefined, fabric_peer:whereis(C1, {not_allowed_there, N2})),
    ?assertEqual(undefined, fabric_peer:whereis(C1, {Svc, 'nobody@127.0.0.1'})),
    SvcPid ! stop,
    close([C1, C2]).

nodes_list(Config) ->
    {C1, N1} = client(Config, "c1_", []),
    {C2, N2} = client(Config, "c2_", []),
    {C3, N3} = client(Config, "c3_", []),
    %% a client without route has no node name and is never listed
    {ok, C4} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                   #{node => node_name("c4_"), features => [heartbeat, session]}),
    L = fabric_peer:nodes(C1),
    ?assert(lists:member(N2, L) andalso lists:member(N3, L)),
    ?assertNot(lists:member(N1, L)),
    ?assertEqual({error, not_supported}, fabric_peer:nodes(C4)),
    close([C3]),
    fabric_peer_test_lib:wait_until(fun() -> not lists:member(N3, fabric_peer:nodes(C1)) end),
    ?assertNot(lists:member(N3, fabric_peer:nodes(C1))),
    ?assert(lists:member(N2, fabric_peer:nodes(C1))),
    close([C1, C2, C4]).

%% A pid travels C1 -> S -> C2 and back as itself; a pid of C2 is one proxy at C1 however
%% it arrives (whereis, messages).
pid_identity(Config) ->
    Test = self(),
    Name2 = fabric_peer_test_lib:unique_name("svc2"),
    Svc2 = spawn(fun() ->
                         receive {From1, A} ->
                                 receive {From2, B} ->
                                         From1 ! {same, From1 =:= From2, self(), {A, B}}
                                 end
                         end
                 end),
    true = register(Name2, Svc2),
    {C2, N2} = client(Config, "c2_", [Name2]),
    {C1, _} = client(Config, "c1_", []),
    Proxy = fabric_peer:whereis(C1, {Name2, N2}),
    ok = fabric_peer:send({C1, {Name2, N2}}, {Test, one}),
    Proxy ! {Test, two},
    receive {same, Same, FromC2, {one, two}} ->
            ?assert(Same),
            %% Svc2's self() reached us as the proxy whereis gave
            ?assertEqual(Proxy, FromC2)
    after ?T -> error(no_answer)
    end,
    close([C1, C2]).

monitors_and_links_across(Config) ->
    Name = fabric_peer_test_lib:unique_name("victim"),
    V = spawn(fun() -> receive {die, R} -> exit(R) end end),
    true = register(Name, V),
    {C2, N2} = client(Config, "c2_", [Name]),
    {C1, _} = client(Config, "c1_", []),
    P = fabric_peer:whereis(C1, {Name, N2}),
    MRef = monitor(process, P),
    Test = self(),
    _Linker = spawn(fun() -> process_flag(trap_exit, true), link(P), Test ! linked,
                            receive {'EXIT', P, R} -> Test ! {linker_got, R} end end),
    receive linked -> ok end,
    P ! {die, {custom, reason}},
    receive {'DOWN', MRef, process, P, R1} -> ?assertEqual({custom, reason}, R1) after ?T -> error(no_down) end,
    receive {linker_got, R2} -> ?assertEqual({custom, reason}, R2) after ?T -> error(no_exit) end,
    close([C1, C2]).

%% A C1 process linked to C2's process dies: the C2 process gets the real reason.
exit_from_c1_reaches_c2(Config) ->
    Test = self(),
    Name = fabric_peer_test_lib:unique_name("trapper"),
    T = spawn(fun() -> process_flag(trap_exit, true), receive {'EXIT', _, R} -> Test ! {trapped, R} end end),
    true = register(Name, T),
    {C2, N2} = client(Config, "c2_", [Name]),
    {C1, _} = client(Config, "c1_", []),
    P = fabric_peer:whereis(C1, {Name, N2}),
    spawn(fun() -> link(P), timer:sleep(100), exit(going_away) end),
    receive {trapped, R} -> ?assertEqual(going_away, R) after ?T -> error(no_exit_signal) end,
    close([C1, C2]).

%% C2's connection dies: C1 is told nodedown at once, and C1's proxies for C2's processes
%% end with noconnection after route_grace (0.5 s here), not before the nodedown.
nodedown_then_grace(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, "c2_", [Svc]),
    {C1, _} = client(Config, "c1_", []),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    ok = fabric_peer:monitor_node(C1, N2, true),
    MRef = monitor(process, P),
    T0 = erlang:monotonic_time(millisecond),
    unlink(C2),
    exit(C2, kill),
    receive {nodedown, N} -> ?assertEqual(N2, N) after ?T -> error(no_nodedown) end,
    T1 = erlang:monotonic_time(millisecond),
    receive {'DOWN', MRef, process, P, R} -> ?assertEqual(noconnection, R) after ?T -> error(no_down) end,
    T2 = erlang:monotonic_time(millisecond),
    ?assert(T2 - T0 >= 500),
    ?assert(T2 >= T1),
    %% the node is gone from nodes(), and monitoring it now fires at once
    ?assertNot(lists:member(N2, fabric_peer:nodes(C1))),
    ok = fabric_peer:monitor_node(C1, N2, true),
    receive {nodedown, N2} -> ok after ?T -> error(no_immediate_nodedown) end,
    SvcPid ! stop,
    close([C1]).

%% A client that goes silent (its connection process suspended, the socket open) is found
%% by its heartbeat: 3 x route_heartbeat (0.2 s here).
nodedown_by_heartbeat(Config) ->
    {C2, N2} = client(Config, "c2_", []),
    {C1, _} = client(Config, "c1_", []),
    ok = fabric_peer:monitor_node(C1, N2, true),
    true = erlang:suspend_process(C2),
    receive {nodedown, N} -> ?assertEqual(N2, N) after ?T -> error(no_nodedown) end,
    true = erlang:resume_process(C2),
    close([C1, C2]).

predicate_refuses(Config) ->
    Test = self(),
    Pred = fun(From, To) -> Test ! {asked, From, To}, binary:match(To, <<"hidden">>) =:= nomatch end,
    {ok, S} = fabric_peer:start_server(0, "secret", #{routing => Pred}),
    Cfg = [{port, fabric_peer:port(S)} | Config],
    {Svc, SvcPid} = echo("svc"),
    {CH, NH} = client(Cfg, "hidden_", [Svc]),
    {C2, N2} = client(Cfg, "c2_", [Svc]),
    {C1, N1} = client(Cfg, "c1_", []),
    L = fabric_peer:nodes(C1),
    ?assert(lists:member(N2, L)),
    ?assertNot(lists:member(NH, L)),
    ?assertEqual(undefined, fabric_peer:whereis(C1, {Svc, NH})),
    ?assertEqual({error, not_allowed}, fabric_peer:send_confirmed({C1, {Svc, NH}}, {self(), x})),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), y}),
    receive {got, Svc, _, y} -> ok after ?T -> error(not_routed) end,
    receive {got, Svc, _, x} -> error(refused_message_delivered) after 200 -> ok end,
    %% the predicate got binaries
    N1Bin = atom_to_binary(N1),
    receive {asked, N1Bin, To} -> ?assert(is_binary(To)) after ?T -> error(not_asked) end,
    SvcPid ! stop,
    close([C1, C2, CH]),
    fabric_peer:stop_server(S).

duplicate_node_refused(Config) ->
    {C1, N1} = client(Config, "c1_", []),
    %% more refusals than max_auth_failures (5): they are not failed authentications
    [?assertEqual({error, {node_in_use, N1}},
                  fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                      #{node => N1, reconnect => false}))
     || _ <- lists:seq(1, 7)],
    %% the server's own node name is refused too
    {fabric_peer_server, _, _} = ?config(server, Config),
    ?assertEqual({error, {node_in_use, node()}},
                 fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{node => node()})),
    {C2, _} = client(Config, "c2_", []),
    ?assert(is_list(fabric_peer:nodes(C2))),
    close([C1, C2]),
    %% once C1 closed, its name is free
    {ok, C3} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{node => N1}),
    close([C3]).

%% An original-style client (legacy mode) sends {m, {Name, Node}, P} to a client node.
legacy_client_as_c1(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, "c2_", [Svc]),
    {ok, L} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                  #{mode => legacy, allow_legacy_auth => true}),
    ok = fabric_peer:send({L, {Svc, N2}}, {self(), from_legacy}),
    receive {got, Svc, _, from_legacy} -> ok after ?T -> error(not_routed) end,
    receive {echo, _, from_legacy} -> ok after ?T -> error(no_echo) end,
    SvcPid ! stop,
    close([L, C2]).

%% A legacy client's pid reaches C1 through a routed message and C1 answers it: the
%% legacy client receives only m frames to its own ids.
legacy_client_as_c2(Config) ->
    {Svc, SvcPid} = echo("svc1"),
    {C1, N1} = client(Config, "c1_", [Svc]),
    {ok, L} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                  #{mode => legacy, allow_legacy_auth => true}),
    Test = self(),
    Q = spawn(fun() -> receive {echo, _, X} -> Test ! {legacy_got, X} end end),
    ok = fabric_peer:send({L, {Svc, N1}}, {Q, to_c1}),
    receive {got, Svc, _, to_c1} -> ok after ?T -> error(not_routed) end,
    receive {legacy_got, to_c1} -> ok after ?T -> error(no_answer_at_legacy) end,
    ?assertEqual(0, maps:get(errors, fabric_peer:info(L))),
    SvcPid ! stop,
    close([L, C1]).

not_supported_without_routing(_Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{}),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret", #{node => node_name("x_")}),
    ?assertNot(lists:member(route, maps:get(features, fabric_peer:info(C)))),
    ?assertNot(lists:member(<<"route">>, maps:get(features, fabric_peer:info(C)))),
    ?assertEqual({error, not_supported}, fabric_peer:nodes(C)),
    ?assertEqual({error, not_supported}, fabric_peer:monitor_node(C, 'a@b', true)),
    ?assertEqual({error, not_supported}, fabric_peer:whereis(C, {x, 'a@b'})),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% A cut C2 resumes before route_grace: C1 saw nodedown, then nodeup; its proxy for C2's
%% process lives on and still reaches it.
resume_within_grace(Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{routing => true, route_grace => 30000}),
    Cfg = [{port, fabric_peer:port(S)} | Config],
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Cfg, "c2_", [Svc]),
    {C1, _} = client(Cfg, "c1_", []),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    MRef = monitor(process, P),
    ok = fabric_peer:monitor_node(C1, N2, true),
    ok = fabric_peer:disconnect(C2),
    receive {nodedown, N2} -> ok after ?T -> error(no_nodedown) end,
    true = fabric_peer_test_lib:wait_until(fun() -> lists:member(N2, fabric_peer:nodes(C1)) end),
    P ! {self(), after_resume},
    receive {echo, _, after_resume} -> ok after ?T -> error(no_echo) end,
    receive {'DOWN', MRef, _, _, R} -> error({proxy_ended, R}) after 0 -> ok end,
    SvcPid ! stop,
    close([C1, C2]),
    fabric_peer:stop_server(S).

%% A client restarted with the same node name while its old session is kept replaces it:
%% the old session ends now (C1's proxies end with noconnection, well before route_grace).
takeover_of_a_kept_session(Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{routing => true, route_grace => 60000}),
    Cfg = [{port, fabric_peer:port(S)} | Config],
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Cfg, "c2_", [Svc]),
    {C1, _} = client(Cfg, "c1_", []),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    MRef = monitor(process, P),
    unlink(C2),
    exit(C2, kill),
    true = fabric_peer_test_lib:wait_until(fun() -> not lists:member(N2, fabric_peer:nodes(C1)) end),
    {ok, C2b} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret",
                                    #{node => N2, allowed => [Svc]}),
    receive {'DOWN', MRef, process, P, R} -> ?assertEqual(noconnection, R) after ?T -> error(no_down) end,
    ?assert(lists:member(N2, fabric_peer:nodes(C1))),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), to_new_incarnation}),
    receive {echo, _, to_new_incarnation} -> ok after ?T -> error(no_echo) end,
    SvcPid ! stop,
    close([C1, C2b]),
    fabric_peer:stop_server(S).

%% route_max_proxies bounds the proxies one client's pids make at the server: a routed
%% message carrying more is dropped (limit), a smaller one goes through.
route_max_proxies(Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{routing => true, route_max_proxies => 3}),
    Cfg = [{port, fabric_peer:port(S)} | Config],
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Cfg, "c2_", [Svc]),
    {C1, _} = client(Cfg, "c1_", []),
    Pids = [spawn(fun() -> receive stop -> ok end end) || _ <- lists:seq(1, 5)],
    ?assertEqual({error, limit}, fabric_peer:send_confirmed({C1, {Svc, N2}}, {self(), Pids})),
    ?assertEqual(ok, fabric_peer:send_confirmed({C1, {Svc, N2}}, {self(), lists:sublist(Pids, 2)})),
    receive {got, Svc, _, Two} -> ?assertEqual(2, length(Two)) after ?T -> error(not_routed) end,
    receive {got, Svc, _, _} -> error(over_limit_delivered) after 200 -> ok end,
    [X ! stop || X <- Pids],
    SvcPid ! stop,
    close([C1, C2]),
    fabric_peer:stop_server(S).

%% The README's routing example (erlang_peer/README.md, "Routing between clients"), read
%% from the README and evaluated as written.
readme_example(_Config) ->
    Readme = filename:join(filename:dirname(fabric_peer_test_lib:conformance_dir()),
                           "erlang_peer/README.md"),
    {ok, Text} = file:read_file(Readme),
    [_, Section] = binary:split(Text, <<"### Routing between clients">>),
    [_, AfterFence] = binary:split(Section, <<"```erlang\n">>),
    [Code, _] = binary:split(AfterFence, <<"```">>),
    {ok, Tokens, _} = erl_scan:string(binary_to_list(Code)),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, ok, Bindings} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    Get = fun(K) -> {value, V} = erl_eval:binding(K, Bindings), V end,
    exit(Get('Echo'), kill),
    fabric_peer:close(Get('C1')),
    fabric_peer:stop_server(Get('S')).
