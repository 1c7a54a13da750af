%% Servers of one fabric on three distributed Erlang nodes (docs/cluster.md, issue 14).
%%
%% The suite starts three peer nodes (OTP's `peer', short names, a test cookie, distribution
%% bound to 127.0.0.1), connects them, and starts one erlang_peer server on each in one
%% `pg' scope. The CT node is a *hidden* node (it controls the peers; it is not part of
%% their `pg' scope nor of `global'), and the erlang_peer clients run on it: a message from
%% a client of one server to a client of another can only go client -> server -> server ->
%% client. The peers are stopped at the end (failover stops one of them itself).
-module(fabric_peer_cluster_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-import(fabric_peer_test_lib, [node_name/1, echo/1, close/1]).
-compile([export_all, nowarn_export_all]).

-define(T, 5000).
-define(SCOPE, fabric_ct_cluster).
-define(COOKIE, fabric_ct_cookie).

all() ->
    [cross_server_send, cross_server_whereis_and_nodes, pid_identity_across,
     monitors_and_links_across, nodeup_nodedown_across, node_name_unique_across,
     global_name_of_an_erlang_process, register_global, cluster_options,
     pg_groups_across, pg_membership_ends, pg_refusals,
     resume_through_another_server, drain_server_moves_clients,
     failover_when_a_server_node_stops].

init_per_suite(Config0) ->
    Config = fabric_peer_test_lib:init_suite(Config0),
    Epmd = ensure_epmd(),
    Dist = case node() of
               nonode@nohost ->
                   {ok, _} = net_kernel:start(fabric_ct_origin,
                                              #{name_domain => shortnames, hidden => true}),
                   true;
               _ -> false
           end,
    Nodes = [start_node(L) || L <- [a, b, c]],
    [{_, NA, _} | _] = Nodes,
    [true = erpc:call(NA, net_kernel, connect_node, [N]) || {_, N, _} <- tl(Nodes)],
    Servers = [{L, N, P, start_server(L, N)} || {L, N, P} <- Nodes],
    %% the mesh is complete and every server sees the others in the scope
    true = wait(fun() ->
                        lists:all(fun({_, N, _}) ->
                                          length(erpc:call(N, erlang, nodes, [])) =:= 2 andalso
                                              length(erpc:call(N, pg, get_members,
                                                               [?SCOPE, fabric_peer_servers])) =:= 3
                                  end, Nodes)
                end),
    [{servers, Servers}, {epmd_started, Epmd}, {dist_started, Dist} | Config].

end_per_suite(Config) ->
    [catch peer:stop(P) || {_, _, P, _} <- ?config(servers, Config)],
    _ = [net_kernel:stop() || ?config(dist_started, Config)],
    _ = [os:cmd("epmd -kill") || ?config(epmd_started, Config)],
    Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    Config.

end_per_testcase(_, Config) -> Config.

%%% nodes and servers

%% epmd must run before this node can be distributed (erl -sname starts it; we may not
%% have been started that way): started on the loopback only, stopped at the end.
ensure_epmd() ->
    case erl_epmd:names("127.0.0.1") of
        {ok, _} -> false;
        _ ->
            _ = os:cmd("epmd -address 127.0.0.1 -daemon"),
            true = wait(
                   fun() -> element(1, erl_epmd:names("127.0.0.1")) =:= ok end),
            true
    end.

start_node(Label) ->
    Name = peer:random_name("fabric_ct_" ++ atom_to_list(Label)),
    [_, Host] = string:split(atom_to_list(node()), "@"),
    Node = list_to_atom(Name ++ "@" ++ Host),
    true = erlang:set_cookie(Node, ?COOKIE),
    Paths = lists:usort([filename:dirname(code:which(M))
                         || M <- [fabric_peer, ?MODULE, fabric_peer_test_lib]]),
    Args = ["-setcookie", atom_to_list(?COOKIE),
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}"]
        ++ lists:append([["-pa", P] || P <- Paths]),
    {ok, Peer, Node} = peer:start(#{name => Name, host => Host, args => Args,
                                    wait_boot => 30000}),
    ok = erpc:call(Node, logger, set_primary_config, [level, error]),
    {Label, Node, Peer}.

%% Servers a and b let clients use any `pg' group; c only `ct_only' (docs/protocol.md 18.1).
start_server(L, Node) ->
    Groups = case L of
                 c -> [ct_only];
                 _ -> true
             end,
    Opts = #{routing => true, cluster => ?SCOPE, route_heartbeat => 200, route_grace => 3000,
             register_global => true, client_groups => Groups},
    {ok, S} = erpc:call(Node, fabric_peer, start_server, [0, "secret", Opts]),
    {S, erpc:call(Node, fabric_peer, port, [S])}.

server(Config, L) ->
    {L, Node, _, {S, Port}} = lists:keyfind(L, 1, ?config(servers, Config)),
    {Node, S, Port}.

%%% clients (on this node) and their processes

client(Config, L, Prefix, Allowed) -> client(Config, L, Prefix, Allowed, #{}).
client(Config, L, Prefix, Allowed, Extra) ->
    {_, _, Port} = server(Config, L),
    Node = node_name(Prefix),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                  Extra#{node => Node, allowed => Allowed}),
    {C, Node}.

%% Client `C' sees these client nodes (the directory is eventually consistent: a client of
%% another server is visible a moment after its connection).
sees(C, Nodes) -> wait(fun() -> Nodes -- fabric_peer:nodes(C) =:= [] end).

%% `F()' true within 5 s (checked every 20 ms), or the last answer.
wait(F) -> wait(F, erlang:monotonic_time(millisecond) + ?T).
wait(F, Deadline) ->
    case catch F() of
        true -> true;
        Other ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> Other;
                false -> timer:sleep(20), wait(F, Deadline)
            end
    end.

%% Two clients that reach each other's processes: C1 at server a allowing `Svc1', C2
%% (`ConnectC2([Svc])', with its fallbacks) allowing `Svc'. `p' is C1's proxy for `Svc' of
%% C2, `q' C2's for `Svc1' of C1, both monitored by the caller (`mon_p', `mon_q').
two_clients(Config, Svc, Svc1, ConnectC2) ->
    {C1, N1} = client(Config, a, "c1_", [Svc1]),
    {C2, N2} = ConnectC2([Svc]),
    true = sees(C1, [N2]),
    true = sees(C2, [N1]),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    Q = fabric_peer:whereis(C2, {Svc1, N1}),
    ?assert(is_pid(P) andalso is_pid(Q)),
    #{c1 => C1, n1 => N1, c2 => C2, n2 => N2, p => P, q => Q,
      mon_p => erlang:monitor(process, P), mon_q => erlang:monitor(process, Q)}.

%%% cases

%% C1 (server a) -> {Svc, N2} -> C2 (server b), the reply back, and a confirmed send.
cross_server_send(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C2, N2} = client(Config, b, "c2_", [Svc]),
    {C1, _} = client(Config, a, "c1_", []),
    true = sees(C1, [N2]),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), hello}),
    receive {got, Svc, From, hello} -> ?assert(fabric_peer:is_proxy(From))
    after ?T -> error(not_routed) end,
    receive {echo, Echo, hello} -> ?assert(fabric_peer:is_proxy(Echo)) after ?T -> error(no_echo) end,
    ?assertEqual(ok, fabric_peer:send_confirmed({C1, {Svc, N2}}, {self(), confirmed})),
    receive {got, Svc, _, confirmed} -> ok after ?T -> error(not_routed) end,
    %% C2's own policy still applies; an unknown node is noproc
    ?assertEqual({error, not_allowed}, fabric_peer:send_confirmed({C1, {not_there, N2}}, x)),
    ?assertEqual({error, noproc}, fabric_peer:send_confirmed({C1, {Svc, 'nobody@127.0.0.1'}}, x)),
    SvcPid ! stop,
    close([C1, C2]).

cross_server_whereis_and_nodes(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {C1, N1} = client(Config, a, "c1_", []),
    {C2, N2} = client(Config, b, "c2_", [Svc]),
    {C3, N3} = client(Config, c, "c3_", []),
    true = sees(C1, [N2]),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    ?assert(is_pid(P) andalso fabric_peer:is_proxy(P)),
    P ! {self(), via_whereis},
    receive {echo, _, via_whereis} -> ok after ?T -> error(no_echo) end,
    ?assertEqual(P, fabric_peer:whereis(C1, {Svc, N2})),
    ?assertEqual(undefined, fabric_peer:whereis(C1, {not_allowed_there, N2})),
    true = wait(
           fun() -> L = fabric_peer:nodes(C1),
                    lists:member(N2, L) andalso lists:member(N3, L) end),
    ?assertNot(lists:member(N1, fabric_peer:nodes(C1))),
    L3 = fabric_peer:nodes(C3),
    ?assert(lists:member(N1, L3) andalso lists:member(N2, L3) andalso not lists:member(N3, L3)),
    SvcPid ! stop,
    close([C1, C2, C3]).

%% A process of C1 reaches C2 by two ways (a routed message from C1, and forwarded by a
%% process of C3 on a third server): one proxy at C2; sent back, C1 gets its own pid.
pid_identity_across(Config) ->
    {Svc, SvcPid} = echo("svc"),
    Fwd = fabric_peer_test_lib:unique_name("fwd"),
    {C1, _} = client(Config, a, "c1_", []),
    {C2, N2} = client(Config, b, "c2_", [Svc]),
    {C3, N3} = client(Config, c, "c3_", [Fwd]),
    %% at C3: forward {fwd, Pid} to {Svc, N2} as {Pid, forwarded}
    true = sees(C1, [N2, N3]),
    true = sees(C3, [N2]),
    FwdPid = spawn(fun() -> receive {fwd, X} -> fabric_peer:send({C3, {Svc, N2}}, {X, forwarded}) end end),
    true = register(Fwd, FwdPid),
    Me = self(),
    ok = fabric_peer:send({C1, {Svc, N2}}, {Me, direct}),
    From1 = receive {got, _, F1, direct} -> F1 after ?T -> error(not_routed) end,
    ok = fabric_peer:send({C1, {Fwd, N3}}, {fwd, Me}),
    From2 = receive {got, _, F2, forwarded} -> F2 after ?T -> error(not_forwarded) end,
    ?assertEqual(From1, From2),
    %% the echo's replies to From1 / From2 reach this very process
    receive {echo, _, direct} -> ok after ?T -> error(no_echo) end,
    receive {echo, _, forwarded} -> ok after ?T -> error(no_echo) end,
    SvcPid ! stop,
    close([C1, C2, C3]).

%% Monitors and links between processes of clients of different servers fire with the
%% real exit reasons, both ways.
monitors_and_links_across(Config) ->
    V1 = fabric_peer_test_lib:unique_name("victim"),
    V2 = fabric_peer_test_lib:unique_name("victim"),
    {C2, N2} = client(Config, b, "c2_", [V1, V2]),
    {C1, _} = client(Config, a, "c1_", []),
    Me = self(),
    Victim = fun() -> receive {die, R} -> exit(R); {'EXIT', _, R} -> Me ! {victim_got, R} end end,
    true = register(V1, spawn(Victim)),
    true = register(V2, spawn(fun() -> process_flag(trap_exit, true), Victim() end)),
    true = sees(C1, [N2]),
    P1 = fabric_peer:whereis(C1, {V1, N2}),
    P2 = fabric_peer:whereis(C1, {V2, N2}),
    ?assert(is_pid(P1) andalso is_pid(P2)),
    %% a monitor at C1 on C2's process: the real reason
    Mon = erlang:monitor(process, P1),
    P1 ! {die, {shutdown, real_reason}},
    receive {'DOWN', Mon, process, P1, R1} -> ?assertEqual({shutdown, real_reason}, R1)
    after ?T -> error(no_down) end,
    %% a process of C1 linked to C2's trapping process dies: C2's process gets the reason
    L = spawn(fun() -> link(P2), Me ! linked, receive go -> exit(boom_from_c1) end end),
    receive linked -> ok after ?T -> error(not_linked) end,
    L ! go,
    receive {victim_got, R2} -> ?assertEqual(boom_from_c1, R2) after ?T -> error(no_exit_signal) end,
    %% and the other way: C2's process ends, a trapping linked process of C1 gets the reason
    V3 = fabric_peer_test_lib:unique_name("victim"),
    true = register(V3, spawn(Victim)),
    ok = fabric_peer:allow(C2, [V3]),
    P3 = fabric_peer:whereis(C1, {V3, N2}),
    T = spawn(fun() -> process_flag(trap_exit, true), link(P3), Me ! linked,
                       receive {'EXIT', P3, R} -> Me ! {trapped, R} end end),
    receive linked -> ok after ?T -> error(not_linked) end,
    P3 ! {die, {custom, 42}},
    receive {trapped, R3} -> ?assertEqual({custom, 42}, R3) after ?T -> error(no_link_signal) end,
    ?assertNot(is_process_alive(T)),
    close([C1, C2]).

%% C1 monitors C2's node (another server): nodedown when C2 goes, nodeup when a client
%% takes the name again (at a third server).
nodeup_nodedown_across(Config) ->
    {C1, _} = client(Config, a, "c1_", []),
    {C2, N2} = client(Config, b, "c2_", []),
    true = wait(fun() -> lists:member(N2, fabric_peer:nodes(C1)) end),
    ok = fabric_peer:monitor_node(C1, N2, true),
    ok = fabric_peer:close(C2),
    receive {nodedown, N2} -> ok after ?T -> error(no_nodedown) end,
    ?assertNot(lists:member(N2, fabric_peer:nodes(C1))),
    {_, Port} = element(4, lists:keyfind(c, 1, ?config(servers, Config))),
    {ok, C2b} = fabric_peer:connect("127.0.0.1", Port, "secret", #{node => N2}),
    true = wait(fun() -> lists:member(N2, fabric_peer:nodes(C1)) end),
    close([C1, C2b]).

%% A client node name is unique across the servers; a kept session of the name at another
%% server ends when a new client takes it.
node_name_unique_across(Config) ->
    {C1, N1} = client(Config, a, "c1_", [], #{reconnect => false}),
    {NodeB, _, PortB} = server(Config, b),
    %% the directory is eventually consistent: b learns of C1 a moment after it connected
    true = wait(fun() -> [] =/= erpc:call(NodeB, pg, get_members,
                                          [?SCOPE, {fabric_peer_up, atom_to_binary(N1)}]) end),
    ?assertEqual({error, {node_in_use, N1}},
                 fabric_peer:connect("127.0.0.1", PortB, "secret", #{node => N1, reconnect => false})),
    %% C1 cut off (its session kept at a), a new client with the name at b takes it over
    {NodeA, _, _} = server(Config, a),
    Held = {fabric_peer_node, atom_to_binary(N1)},
    ?assertMatch([_], erpc:call(NodeA, pg, get_local_members, [?SCOPE, Held])),
    ok = fabric_peer:disconnect(C1),
    true = wait(fun() -> [] =:= erpc:call(NodeA, pg, get_local_members,
                                          [?SCOPE, {fabric_peer_up, atom_to_binary(N1)}]) end),
    ?assertMatch([_], erpc:call(NodeA, pg, get_local_members, [?SCOPE, Held])),
    {ok, C1b} = fabric_peer:connect("127.0.0.1", PortB, "secret", #{node => N1}),
    true = wait(fun() -> [] =:= erpc:call(NodeA, pg, get_local_members, [?SCOPE, Held]) end),
    close([C1b]).

%% A name registered with `global' on node b is reachable from a client of server a
%% (local, then global) when a allows it.
global_name_of_an_erlang_process(Config) ->
    {NodeA, SA, _} = server(Config, a),
    {NodeB, _, _} = server(Config, b),
    G = fabric_peer_test_lib:unique_name("gsvc"),
    Pid = erpc:call(NodeB, ?MODULE, start_global_echo, [G, self()]),
    true = erpc:call(NodeA, ?MODULE, wait, [fun() -> global:whereis_name(G) =:= Pid end]),
    {C1, _} = client(Config, a, "c1_", []),
    %% not allowed at a yet: unreachable
    ?assertEqual(undefined, fabric_peer:whereis(C1, G)),
    ok = erpc:call(NodeA, fabric_peer, allow, [SA, [G]]),
    ok = fabric_peer:send({C1, G}, {self(), by_name}),
    receive {global_got, G, by_name} -> ok after ?T -> error(not_delivered) end,
    receive {echo, E, by_name} -> ?assert(fabric_peer:is_proxy(E)) after ?T -> error(no_echo) end,
    P = fabric_peer:whereis(C1, G),
    ?assert(is_pid(P) andalso fabric_peer:is_proxy(P)),
    Pid ! stop,
    close([C1]).

start_global_echo(Name, Test) ->
    Pid = spawn(fun Loop() ->
                        receive
                            {From, X} when is_pid(From) ->
                                Test ! {global_got, Name, X},
                                From ! {echo, self(), X},
                                Loop();
                            stop -> ok
                        end
                end),
    yes = global:register_name(Name, Pid),
    Pid.

%% A client of b registers one of its processes globally; a client of a reaches it by
%% name; a second registration conflicts; the name ends with the process.
register_global(Config) ->
    {NodeA, SA, _} = server(Config, a),
    G = fabric_peer_test_lib:unique_name("greg"),
    {C2, _} = client(Config, b, "c2_", []),
    {C3, _} = client(Config, c, "c3_", []),
    Me = self(),
    Svc = spawn(fun Loop() -> receive {From, X} -> Me ! {reg_got, X}, From ! {echo, self(), X}, Loop();
                                      stop -> ok end end),
    ?assertEqual(ok, fabric_peer:register_global(C2, G, Svc)),
    ?assertEqual(ok, fabric_peer:register_global(C2, G, Svc)),
    Other = spawn(fun() -> receive stop -> ok end end),
    ?assertEqual({error, {name_in_use, G}}, fabric_peer:register_global(C3, G, Other)),
    true = erpc:call(NodeA, ?MODULE, wait,
                   [fun() -> is_pid(global:whereis_name(G)) end]),
    ok = erpc:call(NodeA, fabric_peer, allow, [SA, [G]]),
    {C1, _} = client(Config, a, "c1_", []),
    ok = fabric_peer:send({C1, G}, {self(), via_global}),
    receive {reg_got, via_global} -> ok after ?T -> error(not_delivered) end,
    receive {echo, _, via_global} -> ok after ?T -> error(no_echo) end,
    ?assertEqual({error, not_registered}, fabric_peer:unregister_global(C3, G)),
    %% the registration ends with the process
    Svc ! stop,
    true = erpc:call(NodeA, ?MODULE, wait,
                   [fun() -> global:whereis_name(G) =:= undefined end]),
    ?assertEqual(ok, fabric_peer:register_global(C3, G, Other)),
    ?assertEqual(ok, fabric_peer:unregister_global(C3, G)),
    true = erpc:call(NodeA, ?MODULE, wait,
                   [fun() -> global:whereis_name(G) =:= undefined end]),
    %% system names are refused
    ?assertEqual({error, not_allowed}, fabric_peer:register_global(C3, fabric_server, Other)),
    Other ! stop,
    close([C1, C2, C3]).

cluster_options(Config) ->
    {NodeA, _, _} = server(Config, a),
    ?assertEqual({error, {bad_option, {cluster, needs_routing}}},
                 erpc:call(NodeA, fabric_peer, start_server, [0, "s", #{cluster => ?SCOPE}])),
    ?assertEqual({error, {cluster_scope_in_use, ?SCOPE}},
                 erpc:call(NodeA, fabric_peer, start_server,
                           [0, "s", #{cluster => ?SCOPE, routing => true}])),
    ?assertMatch({error, {bad_option, {cluster, _}}},
                 fabric_peer:start_server(0, "s", #{cluster => "x", routing => true})),
    ok.

%%% pg groups (docs/protocol.md 18)

%% The members of client group `G' seen on `Node', in the scope.
pg_members_on(Node, G) -> erpc:call(Node, pg, get_members, [?SCOPE, {fabric_peer_group, G}]).

%% A client of a and a client of b join one group, with an Erlang process of node c; each
%% client lists all three (its own process as itself, the others as proxies) and reaches
%% them; leave, and joining twice.
pg_groups_across(Config) ->
    {NodeA, _, _} = server(Config, a),
    {NodeB, _, _} = server(Config, b),
    {NodeC, _, _} = server(Config, c),
    G = atom_to_binary(fabric_peer_test_lib:unique_name("grp")),
    {C1, _} = client(Config, a, "c1_", []),
    {C2, _} = client(Config, b, "c2_", []),
    Me = self(),
    Member = fun(Tag) -> spawn(fun Loop() ->
                                       receive {From, X} -> Me ! {Tag, X}, From ! {echo, Tag, X}, Loop();
                                               stop -> ok
                                       end
                               end)
             end,
    P1 = Member(p1),
    P2 = Member(p2),
    ?assertEqual(ok, fabric_peer:join(C1, G, P1)),
    ?assertEqual(ok, fabric_peer:join(C1, G, P1)),
    ?assertEqual(ok, fabric_peer:join(C2, binary_to_atom(G), P2)),
    E = erpc:call(NodeC, ?MODULE, start_group_member, [G, Me]),
    %% each server's view of the group settles on its own (pg): C1 asks a, C2 asks b
    true = wait(fun() -> length(pg_members_on(NodeA, G)) =:= 3 end),
    true = wait(fun() -> length(pg_members_on(NodeB, G)) =:= 3 end),
    {ok, M1} = fabric_peer:members(C1, G),
    ?assertEqual(3, length(M1)),
    ?assert(lists:member(P1, M1)),
    Others1 = M1 -- [P1],
    ?assert(lists:all(fun fabric_peer:is_proxy/1, Others1)),
    {ok, M2} = fabric_peer:members(C2, G),
    ?assert(lists:member(P2, M2)),
    ?assertEqual(3, length(M2)),
    %% messages to the members C1 sees arrive at P2 and at the Erlang process
    [ok = fabric_peer:send(M, {self(), hello}) || M <- Others1],
    receive {p2, hello} -> ok after ?T -> error(p2_not_delivered) end,
    receive {erl_member, hello} -> ok after ?T -> error(erlang_member_not_delivered) end,
    %% and C2's view reaches P1
    [ok = fabric_peer:send(M, {self(), from_c2}) || M <- M2 -- [P2]],
    receive {p1, from_c2} -> ok after ?T -> error(p1_not_delivered) end,
    ?assertEqual(ok, fabric_peer:leave(C1, G, P1)),
    ?assertEqual({error, not_member}, fabric_peer:leave(C1, G, P1)),
    ?assertEqual({error, not_member}, fabric_peer:leave(C1, G, spawn(fun() -> ok end))),
    true = wait(fun() -> length(pg_members_on(NodeA, G)) =:= 2 end),
    {ok, M3} = fabric_peer:members(C1, G),
    ?assertNot(lists:member(P1, M3)),
    ?assertEqual({ok, []}, fabric_peer:members(C1, <<"nobody_here">>)),
    [X ! stop || X <- [P1, P2, E]],
    close([C1, C2]).

start_group_member(G, Test) ->
    Pid = spawn(fun Loop() ->
                        receive
                            {From, X} when is_pid(From) -> Test ! {erl_member, X}, Loop();
                            stop -> ok
                        end
                end),
    ok = pg:join(?SCOPE, {fabric_peer_group, G}, Pid),
    Pid.

%% Membership ends with the process (its DEAD ends the proxy) and with the session.
pg_membership_ends(Config) ->
    {NodeA, _, _} = server(Config, a),
    {NodeB, _, _} = server(Config, b),
    G = atom_to_binary(fabric_peer_test_lib:unique_name("grp_end")),
    {C1, _} = client(Config, a, "c1_", []),
    {C2, _} = client(Config, b, "c2_", []),
    P1 = spawn(fun() -> receive stop -> ok end end),
    P2 = spawn(fun() -> receive stop -> ok end end),
    ok = fabric_peer:join(C1, G, P1),
    ok = fabric_peer:join(C2, G, P2),
    true = wait(fun() -> length(pg_members_on(NodeA, G)) =:= 2 end),
    P1 ! stop,
    true = wait(fun() -> length(pg_members_on(NodeA, G)) =:= 1 end),
    {ok, [Q2]} = fabric_peer:members(C1, G),
    ?assert(fabric_peer:is_proxy(Q2)),
    %% C2's session ends: server b closes its connection (the proxies end with noconnection);
    %% b's view of P1's leave settles on its own (pg)
    true = wait(fun() -> length(pg_members_on(NodeB, G)) =:= 1 end),
    [Proxy2] = pg_members_on(NodeB, G),
    ok = erpc:call(NodeB, ?MODULE, close_server_side, [Proxy2]),
    true = wait(fun() -> pg_members_on(NodeA, G) =:= [] end),
    ?assertEqual({ok, []}, fabric_peer:members(C1, G)),
    P2 ! stop,
    close([C1, C2]).

close_server_side(Proxy) -> fabric_peer:close(fabric_peer_registry:proxy_conn(Proxy)).

%% `client_groups' refuses groups (server c: only `ct_only'), a session's processes are in
%% at most 64 groups, a dead process cannot join, and a server without `client_groups' or
%% without a cluster does not offer `pg'.
pg_refusals(Config) ->
    {NodeA, _, _} = server(Config, a),
    {C3, _} = client(Config, c, "c3_", []),
    P = spawn(fun() -> receive stop -> ok end end),
    ?assertEqual({error, not_allowed}, fabric_peer:join(C3, <<"elsewhere">>, P)),
    ?assertEqual({error, not_allowed}, fabric_peer:members(C3, <<"elsewhere">>)),
    ?assertEqual(ok, fabric_peer:join(C3, ct_only, P)),
    ?assertEqual(ok, fabric_peer:leave(C3, <<"ct_only">>, P)),
    {C1, _} = client(Config, a, "c1_", []),
    Max = erpc:call(NodeA, fabric_peer_cluster_pg, max_groups, []),
    Pre = atom_to_list(fabric_peer_test_lib:unique_name("lim")),
    Gs = [list_to_binary(Pre ++ integer_to_list(I)) || I <- lists:seq(1, Max + 1)],
    [?assertEqual(ok, fabric_peer:join(C1, Gx, P)) || Gx <- lists:sublist(Gs, Max)],
    ?assertEqual({error, limit}, fabric_peer:join(C1, lists:last(Gs), P)),
    %% a group already joined is still ok, and leaving one makes room
    ?assertEqual(ok, fabric_peer:join(C1, hd(Gs), P)),
    ?assertEqual(ok, fabric_peer:leave(C1, hd(Gs), P)),
    ?assertEqual(ok, fabric_peer:join(C1, lists:last(Gs), P)),
    close([C1, C3]),
    P ! stop,
    %% not offered: a server without client_groups (this node, no cluster)
    {ok, S} = fabric_peer:start_server(0, "s", #{}),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "s", #{}),
    ?assertEqual({error, not_supported}, fabric_peer:join(C, <<"g">>, self())),
    ?assertEqual({error, not_supported}, fabric_peer:members(C, <<"g">>)),
    close([C]),
    ok = fabric_peer:stop_server(S),
    ?assertEqual({error, {bad_option, {client_groups, needs_cluster}}},
                 fabric_peer:start_server(0, "s", #{client_groups => true})),
    ?assertMatch({error, {bad_option, {client_groups, _}}},
                 fabric_peer:start_server(0, "s", #{client_groups => [1]})),
    ok.

%% C2's path to server b is cut (b stays up): C2 reconnects to its fallback c, which relays
%% it to its session at b. Proxies keep their identity both ways, and the 200 messages C1
%% sent to C2's process meanwhile all arrive, in order (acks).
resume_through_another_server(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {Svc1, Svc1Pid} = echo("svc1"),
    {NodeB, SB, PortB} = server(Config, b),
    {_, _, PortC} = server(Config, c),
    {ok, Relay} = fabric_peer_relay:start(PortB),
    ConnectC2 = fun(Allowed) ->
                        N = node_name("c2_"),
                        {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer_relay:port(Relay), "secret",
                                                      #{node => N, allowed => Allowed,
                                                        fallbacks => [{"127.0.0.1", PortC}]}),
                        {C, N}
                end,
    #{c1 := C1, n1 := N1, c2 := C2, n2 := N2, p := P, q := Q, mon_p := MonP, mon_q := MonQ} =
        two_clients(Config, Svc, Svc1, ConnectC2),
    Me = self(),
    ok = fabric_peer_relay:stop(Relay),
    [P ! {Me, {n, I}} || I <- lists:seq(1, 200)],
    [receive {got, Svc, _, {n, I}} -> ok after ?T -> error({lost, I}) end || I <- lists:seq(1, 200)],
    #{peer := Peer, session := _} = fabric_peer:info(C2),
    ?assertEqual(integer_to_binary(PortC), lists:last(binary:split(Peer, <<":">>, [global]))),
    %% its session is still served at b, through c
    ?assert(lists:any(fun(#{transport := relay, state := established}) -> true; (_) -> false end,
                      maps:get(conns, erpc:call(NodeB, fabric_peer, info, [SB])))),
    %% c counts the relay apart (its socket: max_connections), b the connection
    {NodeC0, SC0, _} = server(Config, c),
    ?assertMatch(#{relays := 1}, erpc:call(NodeC0, fabric_peer, info, [SC0])),
    ?assertMatch(#{relays := 0}, erpc:call(NodeB, fabric_peer, info, [SB])),
    %% C2's proxy for C1's process is the same and works
    ?assertEqual(Q, fabric_peer:whereis(C2, {Svc1, N1})),
    Q ! {Me, back},
    receive {got, Svc1, _, back} -> ok after ?T -> error(not_delivered) end,
    ?assertEqual(P, fabric_peer:whereis(C1, {Svc, N2})),
    receive {'DOWN', Mon, process, _, R} when Mon =:= MonP; Mon =:= MonQ -> error({proxy_ended, R})
    after 0 -> ok
    end,
    %% c closes its relays (what drain_server/1 does): C2 reconnects, through c again
    {NodeC, _, _} = server(Config, c),
    [Cluster] = erpc:call(NodeC, pg, get_local_members, [?SCOPE, fabric_peer_servers]),
    ok = fabric_peer:monitor_node(C1, N2, true),
    ok = erpc:call(NodeC, fabric_peer_cluster, drain, [Cluster]),
    receive {nodedown, N2} -> ok after ?T -> error(relay_not_closed) end,
    true = sees(C1, [N2]),
    true = wait(fun() -> maps:get(relays, erpc:call(NodeC, fabric_peer, info, [SC0])) =:= 1 end),
    P ! {Me, after_relay_closed},
    receive {got, Svc, _, after_relay_closed} -> ok after ?T -> error(not_delivered) end,
    receive {'DOWN', Mon2, process, _, R2} when Mon2 =:= MonP; Mon2 =:= MonQ -> error({proxy_ended, R2})
    after 0 -> ok
    end,
    [erlang:demonitor(M, [flush]) || M <- [MonP, MonQ]],
    [X ! stop || X <- [SvcPid, Svc1Pid]],
    close([C1, C2]).

%% Server c drains: it refuses new clients; its client C2 (fallbacks: server b) moves to b
%% with its session (b relays it to c): C1 (server a) keeps its proxy for C2's process. With
%% `sessions => close' the session ends: C2 gets a new one at b, the proxy ends with
%% noconnection, and C2's node comes back.
drain_server_moves_clients(Config) ->
    {Svc, SvcPid} = echo("svc"),
    {NodeC, SC, PortC} = server(Config, c),
    {_, _, PortB} = server(Config, b),
    {C1, _} = client(Config, a, "c1_", []),
    {C2, N2} = client(Config, c, "c2_", [Svc], #{fallbacks => [{"127.0.0.1", PortB}]}),
    true = sees(C1, [N2]),
    P = fabric_peer:whereis(C1, {Svc, N2}),
    MonP = erlang:monitor(process, P),
    ok = fabric_peer:monitor_node(C1, N2, true),
    ?assertEqual(ok, erpc:call(NodeC, fabric_peer, drain_server, [SC])),
    receive {nodedown, N2} -> ok after ?T -> error(no_nodedown) end,
    true = sees(C1, [N2]),
    true = wait(fun() -> #{peer := Peer} = fabric_peer:info(C2),
                         integer_to_binary(PortB) =:= lists:last(binary:split(Peer, <<":">>, [global]))
                end),
    P ! {self(), after_drain},
    receive {got, Svc, _, after_drain} -> ok after ?T -> error(not_delivered) end,
    receive {'DOWN', MonP, process, P, R} -> error({proxy_ended, R}) after 0 -> ok end,
    %% (sessions of the earlier cases' closed clients are kept at c too: detached)
    ?assertMatch([_], [X || #{transport := relay, state := established} = X
                                <- maps:get(conns, erpc:call(NodeC, fabric_peer, info, [SC]))]),
    ?assertMatch({error, {connect, _}},
                 fabric_peer:connect("127.0.0.1", PortC, "secret", #{reconnect => false})),
    %% now with the sessions
    ?assertEqual(ok, erpc:call(NodeC, fabric_peer, drain_server, [SC, #{sessions => close}])),
    receive {'DOWN', MonP, process, P, R2} -> ?assertEqual(noconnection, R2)
    after ?T -> error(no_noconnection) end,
    ?assertEqual(0, maps:get(processes, erpc:call(NodeC, fabric_peer, info, [SC]))),
    true = sees(C1, [N2]),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), new_session}),
    receive {got, Svc, _, new_session} -> ok after ?T -> error(not_routed) end,
    SvcPid ! stop,
    close([C1, C2]).

%% Server b's node stops: C1 (server a) sees C2's processes end with noconnection and
%% C2's node go down; C2 (fallbacks: server a) reconnects to a with a new session within
%% 5 s and is reachable by name again; its old proxies end with noconnection.
failover_when_a_server_node_stops(Config) ->
    {Svc, SvcPid} = echo("svc"),
    Svc1 = fabric_peer_test_lib:unique_name("svc1"),
    true = register(Svc1, spawn(fun() -> receive stop -> ok end end)),
    {_, _, PortA} = server(Config, a),
    ConnectC2 = fun(Allowed) -> client(Config, b, "c2_", Allowed, #{fallbacks => [{"127.0.0.1", PortA}]}) end,
    #{c1 := C1, c2 := C2, n2 := N2, p := P, q := Q, mon_p := MonP, mon_q := MonQ} =
        two_clients(Config, Svc, Svc1, ConnectC2),
    ok = fabric_peer:monitor_node(C1, N2, true),
    Confirm = confirm_held_at_b(Config, C1),
    {_, _, PeerB, _} = lists:keyfind(b, 1, ?config(servers, Config)),
    T0 = erlang:monotonic_time(millisecond),
    ok = peer:stop(PeerB),
    %% a confirmed send held at b ends at once with noconnection (protocol.md 16.8)
    receive {Confirm, R} -> ?assertEqual({error, noconnection}, R)
    after ?T -> error(routed_confirm_not_ended) end,
    receive {'DOWN', MonP, process, P, RP} -> ?assertEqual(noconnection, RP)
    after ?T -> error(no_noconnection_at_c1) end,
    receive {nodedown, N2} -> ok after ?T -> error(no_nodedown) end,
    receive {'DOWN', MonQ, process, Q, RQ} -> ?assertEqual(noconnection, RQ)
    after ?T -> error(no_noconnection_at_c2) end,
    true = wait(fun() -> lists:member(N2, fabric_peer:nodes(C1)) end),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ct:log("failover: C2 reachable again after ~b ms", [Elapsed]),
    ?assert(Elapsed < 5000),
    #{peer := Peer} = fabric_peer:info(C2),
    ?assertEqual(integer_to_binary(PortA), lists:last(binary:split(Peer, <<":">>, [global]))),
    P2 = fabric_peer:whereis(C1, {Svc, N2}),
    ?assert(is_pid(P2) andalso P2 =/= P),
    ok = fabric_peer:send({C1, {Svc, N2}}, {self(), after_failover}),
    receive {got, Svc, _, after_failover} -> ok after ?T -> error(not_routed_after_failover) end,
    SvcPid ! stop,
    close([C1, C2]).

%% A confirmed send from C1 (server a) to a process of C3 (server b) that never reads: C3
%% grants b one message of credit for it, so once its mailbox is full what C1 sends next
%% waits at b, a confirmed send too. The caller (spawned) sends `{Ref, Result}' here.
confirm_held_at_b(Config, C1) ->
    Stuck = fabric_peer_test_lib:unique_name("stuck"),
    StuckPid = spawn(fun() -> receive stop -> ok end end),
    true = register(Stuck, StuckPid),
    {_C3, N3} = client(Config, b, "c3_", [Stuck], #{credit_dest => 1, mailbox_high => 1,
                                                    reconnect => false}),
    true = sees(C1, [N3]),
    [ok = fabric_peer:send({C1, {Stuck, N3}}, {held, I}) || I <- lists:seq(1, 20)],
    true = wait(fun() -> element(2, process_info(StuckPid, message_queue_len)) >= 1 end),
    Me = self(),
    Ref = make_ref(),
    spawn(fun() -> Me ! {Ref, fabric_peer:send_confirmed({C1, {Stuck, N3}}, last, 30000)} end),
    %% all 21 are at b (waiting in C3's connection there) or delivered: the 20 first (issue
    %% order), at most mailbox_high + credit_dest of them delivered
    {NodeB, SB, _} = server(Config, b),
    N3Bin = atom_to_binary(N3),
    true = wait(fun() ->
                        Conns = maps:get(conns, erpc:call(NodeB, fabric_peer, info, [SB])),
                        [Pending] = [X || #{peer_node := Nd, pending := X} <- Conns, Nd =:= N3Bin],
                        {message_queue_len, InBox} = process_info(StuckPid, message_queue_len),
                        Pending + InBox =:= 21 andalso InBox =< 2
                end),
    Ref.
