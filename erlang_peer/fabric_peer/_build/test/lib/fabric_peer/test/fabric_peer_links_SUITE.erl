%% Links, monitors, exit signals and exit reasons across a connection, both directions
%% (docs/protocol.md sections 4.4 and 5.2). The "remote" processes live on this node but are
%% reached only through proxies of a client connection to our server.
-module(fabric_peer_links_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

all() -> [{group, monitors}, {group, links}, {group, exit2}, {group, calls}, {group, legacy}].

groups() ->
    [{monitors, [], [monitor_normal, monitor_killed, monitor_custom_reason, monitor_crash,
                     monitor_noproc, monitor_noconnection_on_close,
                     server_side_proxy_sees_client_death]},
     {links, [], [link_remote_dies_trap_exit, link_remote_dies_kills_linker,
                  link_local_dies_kills_remote, link_local_dies_remote_traps,
                  link_then_die_at_once, link_normal_exit_does_not_kill,
                  unlink_stops_propagation, link_to_dead_remote_gives_noproc,
                  remote_links_to_local, remote_link_dies_kills_local,
                  no_tracing_of_proxies, link_local_kill_is_trappable_remotely,
                  link_local_kill_kills_non_trapping_remote,
                  link_local_kill_without_link_exit_is_untrappable]},
     {exit2, [], [exit_custom_reason_kills_remote, exit_to_trapping_remote,
                  exit_normal_ignored_by_remote, exit_by_process_that_ends_at_once, exit_kill]},
     {calls, [], [gen_server_call_through_proxy, gen_server_call_to_dead_remote]},
     {legacy, [], [legacy_monitor_reasons, legacy_link_local_half_only]}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    {ok, S} = fabric_peer:start_server(0, "secret", #{allow_legacy_auth => true}),
    [{server, S}, {port, fabric_peer:port(S)} | Config].

end_per_suite(Config) ->
    fabric_peer:stop_server(?config(server, Config)),
    Config.

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{}),
    [{conn, C} | Config].

end_per_testcase(_, Config) ->
    fabric_peer:close(?config(conn, Config)),
    Config.

%% A remote process registered on the server side, and its proxy on the client side.
remote(Config, Fun) ->
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "remote", Fun),
    Proxy = fabric_peer:whereis(?config(conn, Config), Name),
    true = is_pid(Proxy) andalso Proxy =/= Pid,
    {Pid, Proxy}.

victim(Config) ->
    Self = self(),
    remote(Config, fun() -> fabric_peer_test_lib:victim(Self, remote) end).

trapper(Config) ->
    Self = self(),
    remote(Config, fun() -> fabric_peer_test_lib:trapper(Self, remote) end).

down_reason(Proxy, Trigger) ->
    Ref = monitor(process, Proxy),
    Trigger(),
    receive {'DOWN', Ref, process, Proxy, R} -> R after 3000 -> ct:fail(no_down) end.

%%% monitors

%% A monitor on a proxy sees normal when the remote process returns.
monitor_normal(Config) ->
    {Pid, Proxy} = victim(Config),
    normal = down_reason(Proxy, fun() -> Pid ! {exit, normal} end).

%% A monitor on a proxy sees killed when the remote process is killed.
monitor_killed(Config) ->
    {Pid, Proxy} = victim(Config),
    killed = down_reason(Proxy, fun() -> exit(Pid, kill) end).

%% A custom exit reason (tuple with float, string, binary) arrives intact.
monitor_custom_reason(Config) ->
    {Pid, Proxy} = victim(Config),
    R = {custom_failure, 2.5, "text", <<7>>},
    R = down_reason(Proxy, fun() -> Pid ! {exit, R} end).

%% A crash reason with a stack trace arrives intact.
monitor_crash(Config) ->
    {Pid, Proxy} = victim(Config),
    {badarith, [_ | _]} = down_reason(Proxy, fun() -> Pid ! crash end).

%% Extended mode keeps noproc: a server process shipped already dead gives DOWN noproc.
monitor_noproc(Config) ->
    ServerDead = spawn(fun() -> ok end),
    {_, Proxy} = remote(Config, fun() -> receive {To, _} -> To ! {here, ServerDead} end end),
    Proxy ! {self(), go},
    P = receive {here, P0} -> P0 after 3000 -> ct:fail(no_reply) end,
    true = P =/= ServerDead,
    noproc = down_reason(P, fun() -> ok end).

%% Closing the connection ends its proxies with noconnection.
monitor_noconnection_on_close(Config) ->
    {_Pid, Proxy} = victim(Config),
    noconnection = down_reason(Proxy, fun() -> fabric_peer:close(?config(conn, Config)) end).

%% The server-side proxy of a client process sees the client process's real exit reason.
server_side_proxy_sees_client_death(Config) ->
    Self = self(),
    {_, EchoProxy} = remote(Config, fun() -> receive {From, M} -> Self ! {got, From, M} end end),
    W = spawn(fun() -> receive {exit, R} -> exit(R) end end),
    EchoProxy ! {W, hello},
    ServerProxy = receive {got, From, hello} -> From after 3000 -> ct:fail(no_msg) end,
    true = ServerProxy =/= W andalso fabric_peer:is_proxy(ServerProxy),
    {client, 42} = down_reason(ServerProxy, fun() -> W ! {exit, {client, 42}} end).

%%% links

%% A trapping local process linked to a proxy gets {'EXIT', Proxy, Reason} with the real reason.
link_remote_dies_trap_exit(Config) ->
    {Pid, Proxy} = victim(Config),
    process_flag(trap_exit, true),
    link(Proxy),
    Pid ! {exit, boom},
    receive {'EXIT', Proxy, boom} -> ok after 3000 -> ct:fail(no_exit) end,
    process_flag(trap_exit, false).

%% A non-trapping local process linked to a proxy dies with the remote reason.
link_remote_dies_kills_linker(Config) ->
    {Pid, Proxy} = victim(Config),
    Self = self(),
    L = spawn(fun() -> link(Proxy), Self ! linked, receive never -> ok end end),
    receive linked -> ok end,
    {remote_reason, 1} = down_reason(L, fun() -> Pid ! {exit, {remote_reason, 1}} end).

%% link(Proxy) then the local process dies: the remote one dies too, with the same reason.
link_local_dies_kills_remote(Config) ->
    {Pid, Proxy} = victim(Config),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    {local_reason, 2} = down_reason(Pid, fun() -> L ! {exit, {local_reason, 2}} end).

%% A trapping remote process gets {'EXIT', ProxyOfLocal, Reason} when the linked local one dies.
link_local_dies_remote_traps(Config) ->
    {Pid, Proxy} = trapper(Config),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    L ! {exit, bye},
    receive {remote, {'EXIT', P, bye}} -> true = P =/= L   % the server-side proxy of L
    after 3000 -> ct:fail(no_exit) end,
    true = is_process_alive(Pid).

%% The local process ends with `kill' (exit(kill) itself): a link signal, trappable in
%% Erlang; with `link_exit' the remote process gets it as one (docs/protocol.md 5.2).
link_local_kill_is_trappable_remotely(Config) ->
    {Pid, Proxy} = trapper(Config),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    L ! {exit, kill},
    receive {remote, {'EXIT', P, kill}} -> true = P =/= L
    after 3000 -> ct:fail(no_exit) end,
    true = is_process_alive(Pid).

%% ... and a remote process that does not trap exits ends with `kill', as a linked process
%% does in Erlang (not `killed': that is exit/2's).
link_local_kill_kills_non_trapping_remote(Config) ->
    {Pid, Proxy} = victim(Config),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    kill = down_reason(Pid, fun() -> L ! {exit, kill} end).

%% Without `link_exit' (an older peer of ours) the link death arrives as exit2 kill, which
%% cannot be trapped: the trapping remote process is killed (the documented difference).
link_local_kill_without_link_exit_is_untrappable(Config) ->
    Feats = fabric_peer_opts:all_features() -- [<<"link_exit">>],
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{features => Feats}),
    false = lists:member(<<"link_exit">>, maps:get(features, fabric_peer:info(C))),
    Self = self(),
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "remote",
                                               fun() -> fabric_peer_test_lib:trapper(Self, remote) end),
    Proxy = fabric_peer:whereis(C, Name),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    killed = down_reason(Pid, fun() -> L ! {exit, kill} end),
    fabric_peer:close(C).

%% A process that links and ends at once still takes the remote process with it (no window
%% in which the link is not yet known).
link_then_die_at_once(Config) ->
    {Pid, Proxy} = victim(Config),
    at_once = down_reason(Pid, fun() -> spawn(fun() -> link(Proxy), exit(at_once) end) end).

%% A normal exit of the local process does not kill a non-trapping remote process.
link_normal_exit_does_not_kill(Config) ->
    {Pid, Proxy} = victim(Config),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    normal = down_reason(L, fun() -> L ! {exit, normal} end),
    round_trip(Pid, Proxy),
    true = is_process_alive(Pid).

%% unlink(Proxy) sends {unlink, A, B}: the later death of the local process no longer propagates.
unlink_stops_propagation(Config) ->
    {Pid, Proxy} = victim(Config),
    Self = self(),
    L = spawn(fun() ->
                      link(Proxy),
                      receive unlink -> unlink(Proxy), Self ! unlinked end,
                      receive {exit, R} -> exit(R) end
              end),
    L ! unlink,
    receive unlinked -> ok end,
    boom = down_reason(L, fun() -> L ! {exit, boom} end),
    round_trip(Pid, Proxy),
    true = is_process_alive(Pid).

%% Linking to a proxy whose remote process already ended gives noproc.
link_to_dead_remote_gives_noproc(Config) ->
    {Pid, Proxy} = victim(Config),
    Alive = is_process_alive(Proxy),
    Info = fabric_peer:info(?config(conn, Config)),
    case down_reason(Proxy, fun() -> Pid ! {exit, normal} end) of
        normal -> ok;
        Other -> ct:fail({Other, Alive, Info, is_process_alive(Pid)})
    end,
    process_flag(trap_exit, true),
    link(Proxy),
    receive {'EXIT', Proxy, noproc} -> ok after 3000 -> ct:fail(no_exit) end,
    process_flag(trap_exit, false).

%% A remote process linking to the proxy of a local process: the local death reaches it.
remote_links_to_local(Config) ->
    {Pid, Proxy} = trapper(Config),
    W = spawn(fun() -> receive {exit, R} -> exit(R) end end),
    Proxy ! {link_to_me, W},               % the trapper reports; we tell it to link
    ProxyOfW = receive {remote, {link_to_me, P}} -> P after 3000 -> ct:fail(no_msg) end,
    Pid ! {link_to, ProxyOfW},
    receive {remote, linked} -> ok end,
    W ! {exit, from_w},
    receive {remote, {'EXIT', ProxyOfW, from_w}} -> ok after 3000 -> ct:fail(no_exit) end.

%% The other half: the remote process linked to the proxy of a local one ends, and the
%% local process gets the exit signal (from the proxy of the remote process).
remote_link_dies_kills_local(Config) ->
    {Pid, Proxy} = victim(Config),
    Self = self(),
    W = spawn(fun() -> process_flag(trap_exit, true),
                       receive M -> Self ! {w, M} end end),
    Proxy ! {link_to_me, W},
    ProxyOfW = receive {remote, {link_to_me, P}} -> P after 3000 -> ct:fail(no_msg) end,
    Pid ! {link_to, ProxyOfW},
    receive {remote, linked} -> ok end,
    Pid ! {exit, from_remote},
    %% From is Proxy, or a stand-in when the DEAD of Pid overtook its exit signal
    receive {w, {'EXIT', From, from_remote}} -> true = is_pid(From) andalso From =/= Pid
    after 3000 -> ct:fail(no_exit) end.

%% Proxies are not traced: a user may trace them (dbg, recon) without breaking links.
no_tracing_of_proxies(Config) ->
    {Pid, Proxy} = victim(Config),
    {tracer, []} = erlang:trace_info(Proxy, tracer),
    1 = erlang:trace(Proxy, true, [procs, {tracer, self()}]),
    L = spawn(fun() -> link(Proxy), receive {exit, R} -> exit(R) end end),
    traced = down_reason(Pid, fun() -> L ! {exit, traced} end).

%%% exit/2

%% exit(Proxy, Reason) kills a non-trapping remote process with Reason.
exit_custom_reason_kills_remote(Config) ->
    {Pid, Proxy} = victim(Config),
    %% watch the proxy first: it ends as soon as the DEAD of Pid arrives
    ProxyRef = monitor(process, Proxy),
    {custom, "r"} = down_reason(Pid, fun() -> exit(Proxy, {custom, "r"}) end),
    receive {'DOWN', ProxyRef, process, Proxy, {custom, "r"}} -> ok
    after 3000 -> ct:fail(proxy_alive) end.

%% A trapping remote process receives {'EXIT', ProxyOfCaller, Reason}.
exit_to_trapping_remote(Config) ->
    {_Pid, Proxy} = trapper(Config),
    exit(Proxy, please_stop),
    receive {remote, {'EXIT', From, please_stop}} -> true = fabric_peer:is_proxy(From)
    after 3000 -> ct:fail(no_exit) end.

%% exit(Proxy, normal) is ignored by a non-trapping remote process.
exit_normal_ignored_by_remote(Config) ->
    {Pid, Proxy} = victim(Config),
    exit(Proxy, normal),
    round_trip(Pid, Proxy),
    true = is_process_alive(Pid),
    true = is_process_alive(Proxy).

%% exit(Proxy, R) by a process that ends right after still reaches the remote process.
exit_by_process_that_ends_at_once(Config) ->
    {_Pid, Proxy} = trapper(Config),
    Caller = spawn(fun() -> exit(Proxy, last_words) end),
    %% From: the server-side proxy of Caller (which may have ended already)
    receive {remote, {'EXIT', From, last_words}} -> true = is_pid(From) andalso From =/= Caller
    after 3000 -> ct:fail(no_exit) end.

%% exit(Proxy, kill) kills the proxy locally (killed) and the remote process (killed).
exit_kill(Config) ->
    {Pid, Proxy} = trapper(Config),
    Ref = monitor(process, Pid),
    killed = down_reason(Proxy, fun() -> exit(Proxy, kill) end),
    receive {'DOWN', Ref, process, Pid, killed} -> ok after 3000 -> ct:fail(remote_alive) end.

%%% gen_server:call through a proxy

%% gen_server:call(Proxy, Req) with a timeout (an alias reply tag on OTP 24+) gets the reply
%% across the connection, also from gen_server:reply/2; the server saw a plain tag.
gen_server_call_through_proxy(Config) ->
    Name = fabric_peer_test_lib:unique_name("gs"),
    _ = fabric_peer_test_server:start(Name),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    Proxy = fabric_peer:whereis(?config(conn, Config), Name),
    true = fabric_peer:is_proxy(Proxy),
    {1, "two", <<3>>} = gen_server:call(Proxy, {echo, {1, "two", <<3>>}}, 3000),
    later = gen_server:call(Proxy, {later, later}),
    {Self, Tag} = gen_server:call(Proxy, from, 3000),
    true = Self =:= self() andalso is_reference(Tag),
    [gen_server:call(Proxy, {echo, N}, 3000) || N <- lists:seq(1, 50)] =:= lists:seq(1, 50)
        orelse ct:fail(replies_out_of_order),
    infinity = gen_server:call(Proxy, {echo, infinity}, infinity).

%% A call to a remote gen_server that is gone exits like a local call (noproc).
gen_server_call_to_dead_remote(Config) ->
    {Pid, Proxy} = victim(Config),
    normal = down_reason(Proxy, fun() -> Pid ! {exit, normal} end),
    {'EXIT', {noproc, _}} = (catch gen_server:call(Proxy, hello, 1000)),
    ok.

%%% legacy

%% With a legacy connection monitors see the real reasons, and noproc becomes normal.
legacy_monitor_reasons(Config) ->
    fabric_peer:close(?config(conn, Config)),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                  #{mode => legacy, allow_legacy_auth => true}),
    Self = self(),
    [begin
         {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "lremote",
                                                   fun() -> receive {From, Tag} -> From ! {me, Tag, self()},
                                                                                   receive {exit, R} -> exit(R) end
                                                            end end),
         ok = fabric_peer:send({C, Name}, {Self, Reason}),
         Proxy = receive {me, Reason, P} -> P after 3000 -> ct:fail(no_reply) end,
         Expected = case Reason of noproc -> normal; _ -> Reason end,
         Expected = down_reason(Proxy, fun() -> Pid ! {exit, Reason} end)
     end || Reason <- [normal, killed, {custom, 1}, noproc]],
    fabric_peer:close(C).

%% Legacy: no link frames; the local half works (remote death reaches a linked local process).
legacy_link_local_half_only(Config) ->
    fabric_peer:close(?config(conn, Config)),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret",
                                  #{mode => legacy, allow_legacy_auth => true}),
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "lremote",
                                              fun() -> receive {From, _} -> From ! {me, self()},
                                                                            receive {exit, R} -> exit(R) end
                                                       end end),
    ok = fabric_peer:send({C, Name}, {self(), hi}),
    Proxy = receive {me, P} -> P after 3000 -> ct:fail(no_reply) end,
    process_flag(trap_exit, true),
    link(Proxy),
    timer:sleep(100),
    {links, []} = process_info(Pid, links),
    Pid ! {exit, gone},
    receive {'EXIT', Proxy, gone} -> ok after 3000 -> ct:fail(no_exit) end,
    process_flag(trap_exit, false),
    fabric_peer:close(C).

%%% helpers

%% A message through the proxy and back: everything the connection sent before it
%% (exit2 frames in particular) has been handled by the remote side.
round_trip(Pid, Proxy) ->
    Tag = make_ref(),
    Proxy ! {probe, Tag},
    receive {remote, {probe, Tag}} -> ok after 3000 -> ct:fail({no_round_trip, Pid}) end.
