%% erlang_peer in the user's supervision tree (fabric_peer:server_child_spec/4,
%% client_child_spec/5, start_server_link/3, connect_link/4) and client connections owned
%% by the caller of connect (README "In your supervision tree", "Owned connections").
-module(fabric_peer_embed_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-behaviour(supervisor).

-import(fabric_peer_test_lib, [wait_until/1]).

-define(SECRET, "embed-secret").

all() ->
    [server_restarted_by_user_supervisor, server_shutdown_by_user_supervisor,
     client_restarted_by_user_supervisor, client_shutdown_ends_its_proxies,
     supervisor_shutdown_stops_clients_then_server, stop_server_of_linked_server,
     connect_link_failure_leaves_no_exit, owner_death_closes_connection,
     owner_kept_with_close_with_owner_false, close_with_owner_checked,
     readme_supervision_snippets].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    fabric_peer_test_lib:start_ping(embed_ping),
    Config.

end_per_suite(Config) -> Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    Config.

end_per_testcase(_, Config) -> Config.

%%% the test supervisor (this module): one_for_one over the given child specs

start_sup(Specs) ->
    {ok, Sup} = supervisor:start_link(?MODULE, Specs),
    %% the case's process must survive the supervisor's shutdown at the end
    true = unlink(Sup),
    Sup.

init(Specs) -> {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, Specs}}.

stop_sup(Sup) ->
    MRef = monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', MRef, process, Sup, _} -> ok after 30000 -> error(sup_not_stopped) end.

child(Sup, Id) ->
    [Pid] = [P || {I, P, _, _} <- supervisor:which_children(Sup), I =:= Id, is_pid(P)],
    Pid.

%% Waits until the supervisor runs a child `Id' other than `Old'.
new_child(Sup, Id, Old) ->
    true = wait_until(fun() -> lists:any(fun({I, P, _, _}) -> I =:= Id andalso is_pid(P) andalso P =/= Old end,
                                         supervisor:which_children(Sup)) end),
    child(Sup, Id).

server_spec() -> fabric_peer:server_child_spec(fabric, 0, ?SECRET, #{allowed => [embed_ping]}).

client_spec(Port) -> fabric_peer:client_child_spec(client, "127.0.0.1", Port, ?SECRET, #{}).

port_of(Sup) -> fabric_peer:port(fabric_peer:server(child(Sup, fabric))).

ping(C) ->
    Ping = fabric_peer:whereis(C, embed_ping),
    true = is_pid(Ping),
    Ping ! {self(), hello},
    receive {Ping, {pong, hello}} -> ok after 10000 -> error(no_pong) end.

servers_sup_children() -> length(supervisor:which_children(fabric_peer_servers_sup)).
clients_sup_children() -> length(supervisor:which_children(fabric_peer_clients_sup)).

%% The port no longer listens (its socket closes as its owner ends: wait_until, not at once).
refused(Port) ->
    {error, econnrefused} =:= gen_tcp:connect({127, 0, 0, 1}, Port, [binary], 5000).

%%% servers

%% A server killed under the user's supervisor is restarted (a new server: port 0 gives a
%% new port) and serves again; it never appears under fabric_peer's own supervisor.
server_restarted_by_user_supervisor(_Config) ->
    Before = servers_sup_children(),
    Sup = start_sup([server_spec()]),
    ?assertEqual(Before, servers_sup_children()),
    Srv1 = child(Sup, fabric),
    Port1 = port_of(Sup),
    {ok, C1} = fabric_peer:connect("127.0.0.1", Port1, ?SECRET, #{reconnect => false}),
    ok = ping(C1),
    CRef = monitor(process, C1),
    exit(Srv1, kill),
    %% its connections went with it (the client does not reconnect here)
    receive {'DOWN', CRef, process, C1, _} -> ok after 30000 -> error(client_alive) end,
    Srv2 = new_child(Sup, fabric, Srv1),
    Port2 = port_of(Sup),
    {ok, C2} = fabric_peer:connect("127.0.0.1", Port2, ?SECRET, #{}),
    ok = ping(C2),
    ?assertMatch(#{connections := 1, port := Port2}, fabric_peer:info(fabric_peer:server(Srv2))),
    fabric_peer:close(C2),
    stop_sup(Sup).

%% terminate_child stops the server for good: its port refuses connections and its handle
%% is forgotten (the registry keeps nothing of it).
server_shutdown_by_user_supervisor(_Config) ->
    Sup = start_sup([server_spec()]),
    Srv = child(Sup, fabric),
    Handle = fabric_peer:server(Srv),
    Port = fabric_peer:port(Handle),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, ?SECRET, #{reconnect => false}),
    CRef = monitor(process, C),
    ok = supervisor:terminate_child(Sup, fabric),
    receive {'DOWN', CRef, process, C, _} -> ok after 30000 -> error(client_alive) end,
    true = wait_until(fun() -> refused(Port) end),
    ?assertEqual(undefined, fabric_peer_registry:port(element(2, Handle))),
    ?assertEqual(undefined, fabric_peer_registry:policy(element(2, Handle))),
    stop_sup(Sup).

%% stop_server/1 works on a linked server too (reason shutdown: a permanent child of the
%% user's supervisor is restarted, as for any child stopped from outside).
stop_server_of_linked_server(_Config) ->
    process_flag(trap_exit, true),
    {ok, Srv} = fabric_peer:start_server_link(0, ?SECRET, #{}),
    Port = fabric_peer:port(fabric_peer:server(Srv)),
    ok = fabric_peer:stop_server(fabric_peer:server(Srv)),
    receive {'EXIT', Srv, shutdown} -> ok after 30000 -> error(server_alive) end,
    true = wait_until(fun() -> refused(Port) end),
    %% a bad port is an error, not a crash of the caller's supervisor
    ?assertEqual({error, {bad_port, 70000}}, fabric_peer:start_server_link(70000, ?SECRET, #{})),
    process_flag(trap_exit, false).

%%% clients

%% A client killed under the user's supervisor is restarted: a new connection, established.
client_restarted_by_user_supervisor(_Config) ->
    {ok, S} = fabric_peer:start_server(0, ?SECRET, #{allowed => [embed_ping]}),
    Port = fabric_peer:port(S),
    Before = clients_sup_children(),
    Sup = start_sup([client_spec(Port)]),
    ?assertEqual(Before, clients_sup_children()),
    C1 = child(Sup, client),
    ok = ping(C1),
    exit(C1, kill),
    C2 = new_child(Sup, client, C1),
    ok = ping(C2),
    ?assertMatch(#{state := established}, fabric_peer:info(C2)),
    true = wait_until(fun() -> maps:get(connections, fabric_peer:info(S)) =:= 1 end),
    stop_sup(Sup),
    fabric_peer:stop_server(S).

%% terminate_child closes the connection: its proxies exit with noconnection and the
%% server sees it go.
client_shutdown_ends_its_proxies(_Config) ->
    {ok, S} = fabric_peer:start_server(0, ?SECRET, #{allowed => [embed_ping]}),
    Sup = start_sup([client_spec(fabric_peer:port(S))]),
    C = child(Sup, client),
    Ping = fabric_peer:whereis(C, embed_ping),
    PRef = monitor(process, Ping),
    ok = supervisor:terminate_child(Sup, client),
    receive {'DOWN', PRef, process, Ping, R} -> ?assertEqual(noconnection, R)
    after 30000 -> error(proxy_alive)
    end,
    ?assertNot(is_process_alive(C)),
    true = wait_until(fun() -> maps:get(connections, fabric_peer:info(S)) =:= 0 end),
    stop_sup(Sup),
    fabric_peer:stop_server(S).

%% The whole tree shut down (children stop in reverse order, the client before the server):
%% both end with the supervisor's reason and the server's port is closed.
supervisor_shutdown_stops_clients_then_server(_Config) ->
    Sup = start_sup([server_spec()]),
    Port = port_of(Sup),
    {ok, _} = supervisor:start_child(Sup, client_spec(Port)),
    C = child(Sup, client),
    Srv = child(Sup, fabric),
    ok = ping(C),
    Refs = [monitor(process, P) || P <- [C, Srv]],
    stop_sup(Sup),
    [receive {'DOWN', R, process, P, Why} -> ?assertEqual(shutdown, Why) after 30000 -> error({alive, P}) end
     || {R, P} <- lists:zip(Refs, [C, Srv])],
    true = wait_until(fun() -> refused(Port) end).

%% A failed first attempt is returned; the caller (trapping exits, as a supervisor does)
%% gets no 'EXIT' of a process it never got to know.
connect_link_failure_leaves_no_exit(_Config) ->
    process_flag(trap_exit, true),
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    ?assertEqual({error, {connect, econnrefused}},
                 fabric_peer:connect_link("127.0.0.1", Port, ?SECRET, #{})),
    receive {'EXIT', _, _} = E -> error({stray, E}) after 200 -> ok end,
    process_flag(trap_exit, false).

%%% owners

%% The owner (the caller of connect/4) exits: the connection closes and the server sees it go.
owner_death_closes_connection(_Config) ->
    {ok, S} = fabric_peer:start_server(0, ?SECRET, #{allowed => [embed_ping]}),
    Port = fabric_peer:port(S),
    Self = self(),
    Owner = spawn(fun() ->
                          {ok, C} = fabric_peer:connect("127.0.0.1", Port, ?SECRET, #{}),
                          Self ! {conn, C},
                          receive never -> ok end
                  end),
    C = receive {conn, C0} -> C0 after 30000 -> error(no_connection) end,
    ok = ping(C),
    CRef = monitor(process, C),
    exit(Owner, kill),
    receive {'DOWN', CRef, process, C, Why} -> ?assertEqual(normal, Why)
    after 30000 -> error(connection_alive_after_owner)
    end,
    true = wait_until(fun() -> maps:get(connections, fabric_peer:info(S)) =:= 0 end),
    fabric_peer:stop_server(S).

%% close_with_owner => false: the connection outlives its owner until close/1.
owner_kept_with_close_with_owner_false(_Config) ->
    {ok, S} = fabric_peer:start_server(0, ?SECRET, #{allowed => [embed_ping]}),
    Port = fabric_peer:port(S),
    Self = self(),
    {Owner, ORef} = spawn_monitor(fun() ->
                          {ok, C} = fabric_peer:connect("127.0.0.1", Port, ?SECRET,
                                                        #{close_with_owner => false}),
                          Self ! {conn, C}
                  end),
    C = receive {conn, C0} -> C0 after 30000 -> error(no_connection) end,
    receive {'DOWN', ORef, process, Owner, _} -> ok end,
    %% a call is processed after the connection got any 'DOWN' of the owner
    ?assertMatch(#{state := established}, fabric_peer:info(C)),
    ok = ping(C),
    ok = fabric_peer:close(C),
    ?assertNot(is_process_alive(C)),
    fabric_peer:stop_server(S).

close_with_owner_checked(_Config) ->
    ?assertEqual({error, {bad_option, {close_with_owner, yes}}},
                 fabric_peer:connect("127.0.0.1", 1, ?SECRET, #{close_with_owner => yes})).

%%% README

%% erlang_peer/README.md: the supervisor module of "Start a server under your supervisor"
%% is compiled as written, started, and the expressions of "Connect a client owned by your
%% process" run against it.
readme_supervision_snippets(Config) ->
    Started = case whereis(ping) of
                  undefined -> fabric_peer_test_lib:start_ping(ping);
                  _ -> none
              end,
    File = filename:join(?config(priv_dir, Config), "my_app_sup.erl"),
    ok = file:write_file(File, readme_snippet("supervision-tree")),
    {ok, my_app_sup, Beam} = compile:file(File, [binary, return_errors]),
    {module, my_app_sup} = code:load_binary(my_app_sup, File, Beam),
    {ok, Sup} = my_app_sup:start_link(),
    true = unlink(Sup),
    {ok, Toks, _} = erl_scan:string(readme_snippet("owned-client")),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    {value, Result, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    ?assertEqual({pong, "hello"}, Result),
    %% the snippet added the supervised client
    ?assertMatch(#{state := established}, fabric_peer:info(child(Sup, fabric_client))),
    stop_sup(Sup),
    is_pid(Started) andalso exit(Started, kill).

%% The Erlang block after `<!-- test: Name -->' in erlang_peer/README.md.
readme_snippet(Name) ->
    Readme = filename:join(filename:dirname(fabric_peer_test_lib:conformance_dir()),
                           "erlang_peer/README.md"),
    {ok, Bin} = file:read_file(Readme),
    Marker = iolist_to_binary(["<!-- test: ", Name, " -->"]),
    [_, After] = binary:split(Bin, Marker),
    [_, Block] = binary:split(After, <<"```erlang\n">>),
    [Code, _] = binary:split(Block, <<"```">>),
    binary_to_list(Code).
