%% OTP semantics at the edges: exit/2 on a proxy of an original (legacy) peer, which cannot
%% receive exit signals, and funs sent back to the peer that sent them.
-module(fabric_peer_edges_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [wait_until/1, unique_name/1]).

-define(SECRET, "edges").
-define(T, 10000).

all() ->
    [exit_on_original_peer_is_refused, exit_on_original_peer_is_counted,
     kill_on_original_peer_leaves_no_dead_proxy_for_a_live_process,
     exit_on_extended_peer_is_delivered, exit_of_a_plain_pid_is_not_a_proxy,
     funs_come_back_to_their_sender, funs_of_the_peer_stay_handles].

init_per_suite(Config) ->
    fabric_peer_test_lib:start_server(?SECRET, #{allow_legacy_auth => true},
                                      fabric_peer_test_lib:init_suite(Config)).

end_per_suite(Config) -> fabric_peer_test_lib:stop_server(Config).

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    Config.

end_per_testcase(_, Config) -> Config.

%% A client of the given mode (legacy: it speaks exactly as an original client, so the
%% server sees an original peer and the client an original-speaking server... both sides of
%% the connection run without any extension).
connect(Config, legacy) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), ?SECRET,
                                  #{mode => legacy, allow_legacy_auth => true}),
    C;
connect(Config, extended) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), ?SECRET, #{}),
    C.

%% A process on the server side, registered and allowed, that traps exits and reports
%% every exit signal to this case; `{From, hello}' is answered `{self(), hi}', so the
%% client gets a proxy for it even from an original peer (which has no whereis).
remote(Config) ->
    Self = self(),
    Name = unique_name("edges"),
    Pid = spawn(fun() -> process_flag(trap_exit, true), remote_loop(Self) end),
    true = register(Name, Pid),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    {Name, Pid}.

remote_loop(Observer) ->
    receive
        {'EXIT', _, R} -> Observer ! {remote_exit, R};
        {From, hello} -> From ! {self(), hi};
        {From, ping} -> From ! {self(), pong};
        {From, {echo, X}} -> Observer ! {remote_got, X}, From ! {self(), {echo, X}}
    end,
    remote_loop(Observer).

%% The client's proxy for the remote process.
proxy(C, Name) ->
    ok = fabric_peer:send({C, Name}, {self(), hello}),
    receive {P, hi} -> true = fabric_peer:is_proxy(P), P after ?T -> error(no_hi) end.

%% A round trip through the remote process: everything sent to it before has been handled.
sync(Proxy) ->
    Proxy ! {self(), ping},
    receive {_, pong} -> ok after ?T -> error(no_pong) end.

local_errors(C) -> maps:get(local_errors, fabric_peer:info(C), 0).

%%% exit/2 with an original peer

%% fabric_peer:exit/2 says so: nothing is sent, the proxy lives on, even for kill.
exit_on_original_peer_is_refused(Config) ->
    C = connect(Config, legacy),
    {Name, Remote} = remote(Config),
    Proxy = proxy(C, Name),
    ?assertEqual({error, not_supported}, fabric_peer:exit(Proxy, bye)),
    ?assertEqual({error, not_supported}, fabric_peer:exit(Proxy, kill)),
    ok = sync(Proxy),
    ?assert(is_process_alive(Proxy)),
    ?assert(is_process_alive(Remote)),
    receive {remote_exit, R} -> error({delivered, R}) after 0 -> ok end,
    fabric_peer:close(C).

%% A plain exit(Proxy, Reason) cannot reach the original: logged and counted in
%% local_errors (as a failed Proxy ! Msg is), never silently ignored; `normal' is not an
%% error (a process that does not trap exits ignores it anyway).
exit_on_original_peer_is_counted(Config) ->
    C = connect(Config, legacy),
    {Name, _} = remote(Config),
    Proxy = proxy(C, Name),
    Before = local_errors(C),
    exit(Proxy, normal),
    exit(Proxy, bye),
    true = wait_until(fun() -> local_errors(C) =:= Before + 1 end),
    ok = sync(Proxy),
    receive {remote_exit, R} -> error({delivered, R}) after 0 -> ok end,
    ?assertEqual(Before + 1, local_errors(C)),
    fabric_peer:close(C).

%% exit(Proxy, kill) kills the proxy (kill cannot be trapped) but not the remote process:
%% the next time the peer names that process it gets a new, live proxy, not the dead one.
kill_on_original_peer_leaves_no_dead_proxy_for_a_live_process(Config) ->
    C = connect(Config, legacy),
    {Name, Remote} = remote(Config),
    Proxy = proxy(C, Name),
    MRef = monitor(process, Proxy),
    Before = local_errors(C),
    exit(Proxy, kill),
    receive {'DOWN', MRef, process, Proxy, killed} -> ok after ?T -> error(proxy_alive) end,
    true = wait_until(fun() -> local_errors(C) =:= Before + 1 end),
    ?assert(is_process_alive(Remote)),
    Proxy2 = proxy(C, Name),
    ?assertNotEqual(Proxy, Proxy2),
    ?assert(is_process_alive(Proxy2)),
    ok = sync(Proxy2),
    receive {remote_exit, R} -> error({delivered, R}) after 0 -> ok end,
    fabric_peer:close(C).

%%% the same with a peer of ours, for contrast

exit_on_extended_peer_is_delivered(Config) ->
    C = connect(Config, extended),
    {Name, _} = remote(Config),
    Proxy = proxy(C, Name),
    ?assertEqual(ok, fabric_peer:exit(Proxy, bye)),
    receive {remote_exit, R} -> ?assertEqual(bye, R) after ?T -> error(not_delivered) end,
    fabric_peer:close(C).

exit_of_a_plain_pid_is_not_a_proxy(_Config) ->
    ?assertEqual({error, not_a_proxy}, fabric_peer:exit(self(), bye)).

%%% funs

%% A fun sent to the peer is an inert handle there; sent back, it is the fun again (its
%% origin recognises the funs it sent, as it recognises its own pids), callable.
funs_come_back_to_their_sender(Config) ->
    C = connect(Config, extended),
    {Name, _} = remote(Config),
    Proxy = proxy(C, Name),
    Secret = make_ref(),
    Fun = fun(X) -> {X, Secret} end,
    ok = fabric_peer:send(Proxy, {self(), {echo, [Fun, fun erlang:node/0]}}),
    %% the server side (the same VM here, another connection end) got handles only
    receive {remote_got, Got} -> ?assertMatch([{fabric_fun, 1, _}, {fabric_fun, 0, _}], Got)
    after ?T -> error(no_echo)
    end,
    receive {Proxy, {echo, [Back, Node]}} ->
            ?assertEqual(Fun, Back),
            ?assertEqual({x, Secret}, Back(x)),
            ?assertEqual(fun erlang:node/0, Node)
    after ?T -> error(no_echo)
    end,
    fabric_peer:close(C).

%% A fun of the peer, or bytes it made up, is never made callable here: the handle it is
%% stays a handle when it comes back the other way, and a handle sent to its origin
%% (which never sent it to us) is a handle there too.
funs_of_the_peer_stay_handles(Config) ->
    {S, _, _} = fabric_peer_test_lib:ext_login(?config(port, Config), ?SECRET),
    {Name, _} = remote(Config),
    Forged = term_to_binary(fun erlang:halt/0),
    fabric_peer_test_lib:send(S, {m, Name, {t, {{pr, 1}, {t, {echo, {f, 0, Forged}}}}}}),
    receive {remote_got, Got} -> ?assertEqual({fabric_fun, 0, Forged}, Got)
    after ?T -> error(no_echo)
    end,
    %% and it goes back to the raw peer as the same handle
    {m, _, {t, {_, {t, {echo, Echo}}}}} = fabric_peer_test_lib:recv(S),
    ?assertEqual({f, 0, Forged}, Echo),
    gen_tcp:close(S).
