%% Erlang client <-> Erlang server: the seed example, whereis and the name policy, legacy and
%% extended modes, authentication failures, concurrency and robustness of the server.
-module(fabric_peer_basic_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [raw_connect/1, send/2, recv/1, expect_closed/1,
                               vector/1, start_ping/1]).

all() -> [{group, extended}, {group, identity}, {group, legacy}, {group, auth}, {group, server}].

groups() ->
    [{extended, [], [seed_ping_example, whereis_not_allowed, whereis_system_names,
                     send_to_name, name_node_bypass_refused, pids_round_trip,
                     extended_values_round_trip, info_reports_stats,
                     frame_too_large_refused_locally]},
     {identity, [], [dying_sender_keeps_identity, dead_export_shipped_again_keeps_its_id,
                      pr_of_dead_proxy_is_that_proxy]},
     {legacy, [], [legacy_client_ping, legacy_whereis_not_supported,
                   legacy_refuses_extended_values, legacy_dead_noproc_is_normal,
                   legacy_only_server, legacy_only_server_options]},
     {auth, [], [wrong_secret, legacy_auth_refused_by_default, legacy_server_refused_by_client,
                 server_mac_checked, handshake_timeout, bad_first_frames]},
     {server, [], [many_concurrent_clients, connect_and_close_does_not_disturb,
                   stop_server_ends_connections, port_in_use]}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    start_ping(ping),
    %% the default handshake_timeout (10 s): a short one would make the first connections of
    %% a loaded CI machine (cold code loading, crypto) fail; handshake_timeout/1 has its own
    %% the auth cases fail on purpose many times from 127.0.0.1: no throttling here
    %% (fabric_peer_security_SUITE tests it)
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [ping], allow_legacy_auth => true,
                                                        max_auth_failures => 0}),
    [{server, S}, {port, fabric_peer:port(S)} | Config].

end_per_suite(Config) ->
    fabric_peer:stop_server(?config(server, Config)),
    Config.

init_per_testcase(_, Config) -> fabric_peer_test_lib:flush(), Config.
end_per_testcase(_, Config) -> Config.

connect(Config) -> connect(Config, #{}).
connect(Config, Opts) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", Opts),
    C.

%%% extended

%% The seed's example: whereis(ping), send {self(), {payload, "abababa"}}, get the pong, send again.
seed_ping_example(Config) ->
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    true = is_pid(Ping),
    true = fabric_peer:is_proxy(Ping),
    Ping ! {self(), {payload, "abababa"}},
    receive {Ping, {pong, {payload, "abababa"}}} -> ok after 3000 -> ct:fail(no_pong) end,
    Ping ! {self(), again},
    receive {Ping, {pong, again}} -> ok after 3000 -> ct:fail(no_second_pong) end,
    %% the same remote process is the same proxy
    Ping = fabric_peer:whereis(C, ping),
    fabric_peer:close(C).

%% whereis of a registered but not allowed name answers undefined.
whereis_not_allowed(Config) ->
    Name = fabric_peer_test_lib:unique_name("private"),
    register(Name, self()),
    C = connect(Config),
    undefined = fabric_peer:whereis(C, Name),
    undefined = fabric_peer:whereis(C, <<"never_heard_of_this_atom_xyz">>),
    false = lists:member(<<"never_heard_of_this_atom_xyz">>, [atom_to_binary(A) || A <- [ping]]),
    {'EXIT', {badarg, _}} = (catch binary_to_existing_atom(<<"never_heard_of_this_atom_xyz">>)),
    fabric_peer:close(C).

%% System names are refused even when listed in allowed.
whereis_system_names(Config) ->
    {ok, S} = fabric_peer:start_server(0, "s", #{allowed => [rex, init, user, logger,
                                                            fabric_peer_sup]}),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "s", #{}),
    [undefined = fabric_peer:whereis(C, N) || N <- [rex, init, user, logger, fabric_peer_sup,
                                                    code_server, net_kernel]],
    fabric_peer:close(C),
    fabric_peer:stop_server(S),
    Config.

%% send({Conn, Name}) reaches an allowed name; a refused name is dropped.
send_to_name(Config) ->
    C = connect(Config),
    ok = fabric_peer:send({C, ping}, {self(), by_name}),
    receive {P, {pong, by_name}} -> true = fabric_peer:is_proxy(P) after 3000 -> ct:fail(no_pong) end,
    Name = fabric_peer_test_lib:unique_name("hidden"),
    register(Name, self()),
    ok = fabric_peer:send({C, Name}, direct),
    receive direct -> ct:fail(delivered_to_refused_name) after 300 -> ok end,
    fabric_peer:close(C).

%% {Name, Node} goes through the same policy: rex and unlisted names are refused.
name_node_bypass_refused(Config) ->
    C = connect(Config),
    Name = fabric_peer_test_lib:unique_name("private_proc"),
    register(Name, self()),
    ok = fabric_peer:send({C, {Name, node()}}, bypass),
    ok = fabric_peer:send({C, {rex, node()}}, {'$gen_call', {self(), make_ref()}, {call, os, getpid, [], user}}),
    receive M -> ct:fail({unexpected, M}) after 300 -> ok end,
    %% an allowed name with the right node works
    ok = fabric_peer:send({C, {ping, node()}}, {self(), with_node}),
    receive {_, {pong, with_node}} -> ok after 3000 -> ct:fail(no_pong) end,
    %% an allowed name with a foreign node is refused
    ok = fabric_peer:send({C, {ping, 'other@host'}}, {self(), foreign}),
    receive {_, {pong, foreign}} -> ct:fail(foreign_node_delivered) after 300 -> ok end,
    fabric_peer:close(C).

%% Pids travel both ways: our pid comes back as itself ({pl, Id}), a third pid too.
pids_round_trip(Config) ->
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    Other = spawn(fun() -> receive _ -> ok end end),
    Ping ! {self(), {Other, self(), [Other]}},
    receive {Ping, {pong, {Other2, Me, [Other3]}}} ->
            Other = Other2, Other = Other3, Me = self()
    after 3000 -> ct:fail(no_pong) end,
    exit(Other, kill),
    fabric_peer:close(C).

%% Maps, references, bitstrings, funs (as inert handles) and ports round-trip in extended mode.
extended_values_round_trip(Config) ->
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    Ref = make_ref(),
    [Port | _] = erlang:ports(),
    Msg = {#{a => [1, {x}], Ref => <<1:3>>}, {}, [1 | tail], 1.5, -(1 bsl 90), Port},
    Ping ! {self(), Msg},
    receive {Ping, {pong, Back}} -> Msg = Back after 3000 -> ct:fail(no_pong) end,
    %% the server's ping gets an inert handle and sends it back: the fun comes back to us,
    %% its sender, as the fun itself (fabric_peer_edges_SUITE tests the handle side)
    Fun = fun(X) -> X end,
    ok = fabric_peer:send(Ping, {self(), Fun}),
    receive {Ping, {pong, Handle}} -> ?assertEqual(Fun, Handle) after 3000 -> ct:fail(no_pong) end,
    fabric_peer:close(C).

%% info/1 on a connection and on the server reports mode, features and counters.
info_reports_stats(Config) ->
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    Ping ! {self(), x},
    receive {Ping, _} -> ok end,
    ok = fabric_peer:send(Ping, {self(), y}),
    receive {Ping, _} -> ok end,
    #{mode := extended, proxies := 1, exported := 1, frames_in := In, frames_out := Out,
      errors := 0, features := F, session := true, messages_in := 2, messages_out := 2}
        = fabric_peer:info(C),
    true = In >= 3 andalso Out >= 3,
    true = lists:member(<<"whereis">>, F),
    #{connections := N, port := P, messages_in := SIn, messages_out := SOut}
        = fabric_peer:info(?config(server, Config)),
    true = SIn >= 2 andalso SOut >= 2,
    P = ?config(port, Config),
    true = N >= 1,
    fabric_peer:close(C).

%% A frame over the peer's announced max_frame is a local error; the connection stays up.
frame_too_large_refused_locally(Config) ->
    {ok, S} = fabric_peer:start_server(0, "s", #{allowed => [ping], max_frame => 4096}),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "s", #{}),
    Ping = fabric_peer:whereis(C, ping),
    {error, {frame_too_large, _, 4096}} = fabric_peer:send(Ping, {self(), crypto:strong_rand_bytes(8000)}),
    ok = fabric_peer:send(Ping, {self(), small}),
    receive {Ping, {pong, small}} -> ok after 3000 -> ct:fail(no_pong) end,
    fabric_peer:close(C),
    fabric_peer:stop_server(S),
    Config.

%%% identity (docs/protocol.md 4.3, "Identity survives death")

%% A process that sends self() through a proxy and ends at once reaches the peer as the proxy
%% the peer already has for it (its DOWN overtakes its message on our side), many times over.
dying_sender_keeps_identity(Config) ->
    Self = self(),
    {Name, Coll} = fabric_peer_test_lib:remote(?config(server, Config), "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    C = connect(Config),
    Proxy = fabric_peer:whereis(C, Name),
    lists:foreach(
      fun(I) ->
              P = spawn(fun() ->
                                Proxy ! {hello, I, self()},
                                receive go -> Proxy ! {bye, I, self()} end
                        end),
              Known = receive {coll, {hello, I, K}} -> K after 3000 -> ct:fail(no_hello) end,
              true = fabric_peer:is_proxy(Known),
              P ! go,
              receive
                  {coll, {bye, I, Known}} -> ok;
                  {coll, {bye, I, Other}} -> ct:fail({new_pid_for_a_dying_sender, I, Known, Other})
              after 3000 -> ct:fail(no_bye)
              end
      end, lists:seq(1, 200)),
    fabric_peer:close(C),
    exit(Coll, kill).

%% On the wire: an exported process that ended, shipped again, goes out with its old id,
%% followed by its DEAD again (for a peer that forgot it); no new id is spent.
dead_export_shipped_again_keeps_its_id(Config) ->
    Self = self(),
    {Name, Coll} = fabric_peer_test_lib:remote(?config(server, Config), "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    {S, _, _} = fabric_peer_test_lib:ext_login(?config(port, Config), "secret"),
    send(S, term_to_binary({m, Name, {t, {hello, {pr, 1}}}})),
    R1 = receive {coll, {hello, R}} -> R after 3000 -> ct:fail(no_hello) end,
    E = spawn(fun() -> receive {exit, Why} -> exit(Why) end end),
    R1 ! {shipped, E},
    {m, 1, {t, {shipped, {pr, K}}}} = recv_frame(S),
    E ! {exit, bye},
    {'DEAD', {pr, K}, bye} = recv_frame(S),
    R1 ! {again, E},
    {m, 1, {t, {again, {pr, K}}}} = recv_frame(S),
    {'DEAD', {pr, K}, bye} = recv_frame(S),
    %% and {pl, K} from the peer is E itself
    send(S, term_to_binary({m, Name, {t, {back, {pl, K}}}})),
    receive {coll, {back, E}} -> ok after 3000 -> ct:fail(not_the_same_pid) end,
    gen_tcp:close(S),
    exit(Coll, kill).

%% {pr, Id} naming a proxy that ended (its DEAD arrived) is that same dead proxy, not a new
%% live one; a repeated DEAD for it is ignored.
pr_of_dead_proxy_is_that_proxy(Config) ->
    Self = self(),
    {Name, Coll} = fabric_peer_test_lib:remote(?config(server, Config), "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    {S, _, _} = fabric_peer_test_lib:ext_login(?config(port, Config), "secret"),
    send(S, term_to_binary({m, Name, {t, {first, {pr, 5}}}})),
    P5 = receive {coll, {first, P}} -> P after 3000 -> ct:fail(no_first) end,
    Ref = monitor(process, P5),
    send(S, term_to_binary({'DEAD', {pr, 5}, gone})),
    receive {'DOWN', Ref, process, P5, gone} -> ok after 3000 -> ct:fail(no_down) end,
    send(S, term_to_binary({m, Name, {t, {second, {pr, 5}}}})),
    receive {coll, {second, P5}} -> ok;
            {coll, {second, Other}} -> ct:fail({new_proxy_for_a_dead_id, P5, Other})
    after 3000 -> ct:fail(no_second)
    end,
    send(S, term_to_binary({'DEAD', {pr, 5}, gone})),
    send(S, term_to_binary({m, Name, {t, {third, {pr, 5}}}})),
    receive {coll, {third, P5}} -> ok after 3000 -> ct:fail(no_third) end,
    false = is_process_alive(P5),
    gen_tcp:close(S),
    exit(Coll, kill).

%% The next frame that is not a heartbeat.
recv_frame(S) ->
    case recv(S) of
        {heartbeat, _} -> recv_frame(S);
        T -> T
    end.

%%% legacy

%% Our client in legacy mode (as an original client) reaches ping by name; the reply comes back.
legacy_client_ping(Config) ->
    C = connect(Config, #{mode => legacy, allow_legacy_auth => true}),
    #{mode := legacy, features := []} = fabric_peer:info(C),
    ok = fabric_peer:send({C, ping}, {self(), {payload, "abababa"}}),
    P = receive {P0, {pong, {payload, "abababa"}}} -> P0 after 3000 -> ct:fail(no_pong) end,
    P ! {self(), again},
    receive {P, {pong, again}} -> ok after 3000 -> ct:fail(no_second_pong) end,
    fabric_peer:close(C).

%% whereis on a legacy connection returns {error, not_supported}.
legacy_whereis_not_supported(Config) ->
    C = connect(Config, #{mode => legacy, allow_legacy_auth => true}),
    {error, not_supported} = fabric_peer:whereis(C, ping),
    fabric_peer:close(C).

%% Maps, ports, funs, non-byte bitstrings are a local error with a legacy peer; connection stays up.
legacy_refuses_extended_values(Config) ->
    C = connect(Config, #{mode => legacy, allow_legacy_auth => true}),
    [Port | _] = erlang:ports(),
    {error, {unsupported, map}} = fabric_peer:send({C, ping}, {self(), #{}}),
    {error, {unsupported, port}} = fabric_peer:send({C, ping}, {self(), Port}),
    {error, {unsupported, 'fun'}} = fabric_peer:send({C, ping}, {self(), fun() -> ok end}),
    {error, {unsupported, bitstring}} = fabric_peer:send({C, ping}, {self(), <<1:1>>}),
    ok = fabric_peer:send({C, ping}, {self(), fine}),
    receive {_, {pong, fine}} -> ok after 3000 -> ct:fail(no_pong) end,
    fabric_peer:close(C).

%% A pid shipped dead gives DEAD noproc: legacy turns it into normal, extended keeps noproc.
legacy_dead_noproc_is_normal(Config) ->
    normal = dead_pid_reason(Config, #{mode => legacy, allow_legacy_auth => true}),
    noproc = dead_pid_reason(Config, #{}).

dead_pid_reason(Config, Opts) ->
    Server = ?config(server, Config),
    Self = self(),
    {Name, Coll} = fabric_peer_test_lib:remote(Server, "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    C = connect(Config, Opts),
    Dead = spawn(fun() -> receive {exit, R0} -> exit(R0) end end),
    ok = fabric_peer:send({C, Name}, {shipped, Dead}),
    ProxyOfDead = receive {coll, {shipped, P}} -> P after 3000 -> ct:fail(not_delivered) end,
    true = fabric_peer:is_proxy(ProxyOfDead),
    MRef = monitor(process, ProxyOfDead),
    Dead ! {exit, noproc},
    Reason = receive {'DOWN', MRef, process, _, R} -> R after 3000 -> ct:fail(no_down) end,
    %% a dead pid shipped back to its origin is the same pid again
    ok = fabric_peer:send({C, ping}, {self(), Dead}),
    receive {_, {pong, Dead}} -> ok after 3000 -> ct:fail(not_same_pid) end,
    fabric_peer:close(C),
    exit(Coll, kill),
    Reason.

%% mode => legacy on a server: an extended hello gets the legacy challenge (a 2-tuple, as the
%% original sends), so our extended client is refused unless it allows legacy auth and then
%% speaks legacy (no features, no whereis, maps refused locally); only legacy frames travel.
legacy_only_server(_Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{mode => legacy, allow_legacy_auth => true,
                                                      allowed => [ping]}),
    Port = fabric_peer:port(S),
    Raw = raw_connect(Port),
    send(Raw, term_to_binary(fabric_peer_handshake:extended_hello(crypto:strong_rand_bytes(32)))),
    {challenge, Ch} = recv(Raw),
    32 = length(Ch),
    send(Raw, {response, fabric_peer_test_lib:md5hex(Ch ++ "secret")}),
    {auth, success} = recv(Raw),
    gen_tcp:close(Raw),
    {error, {auth_failed, legacy_server}} =
        fabric_peer:connect("127.0.0.1", Port, "secret", #{reconnect => false}),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret", #{allow_legacy_auth => true}),
    #{mode := legacy, features := []} = fabric_peer:info(C),
    {error, not_supported} = fabric_peer:whereis(C, ping),
    {error, {unsupported, map}} = fabric_peer:send({C, ping}, {self(), #{}}),
    ok = fabric_peer:send({C, ping}, {self(), {payload, "abababa"}}),
    receive {_, {pong, {payload, "abababa"}}} -> ok after 3000 -> ct:fail(no_pong) end,
    #{modes := [legacy]} = fabric_peer:info(S),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% A legacy-only server without allow_legacy_auth could serve nobody: refused at start.
legacy_only_server_options(_Config) ->
    {error, {bad_option, {mode, {legacy, requires_allow_legacy_auth}}}} =
        fabric_peer:start_server(0, "secret", #{mode => legacy}),
    {error, {bad_option, {mode, original}}} =
        fabric_peer:start_server(0, "secret", #{mode => original, allow_legacy_auth => true}).

%%% auth

%% A wrong secret fails with auth_failed and the server keeps serving.
wrong_secret(Config) ->
    {error, {auth_failed, _}} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "WRONG", #{}),
    {error, {auth_failed, _}} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "WRONG",
                                                    #{mode => legacy, allow_legacy_auth => true}),
    %% raw: vector 05 (response for secret "WRONG") against a fresh challenge -> {auth, failed}, close
    S = raw_connect(?config(port, Config)),
    send(S, vector("01")),
    {challenge, _} = recv(S),
    send(S, vector("05")),
    [{auth, failed}] = expect_closed(S),
    C = connect(Config),
    fabric_peer:close(C).

%% A server with default options answers an original client {auth, failed} and closes.
legacy_auth_refused_by_default(Config) ->
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{allowed => [ping]}),
    Port = fabric_peer:port(Srv),
    S = raw_connect(Port),
    send(S, vector("01")),
    {challenge, Ch} = recv(S),
    send(S, {response, fabric_peer_test_lib:md5hex(Ch ++ "secret")}),
    [{auth, failed}] = expect_closed(S),
    {error, {auth_failed, _}} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                                    #{mode => legacy, allow_legacy_auth => true}),
    fabric_peer:stop_server(Srv),
    Config.

%% Our client refuses an original (MD5-only) server unless allow_legacy_auth is set.
legacy_server_refused_by_client(Config) ->
    {ok, L} = gen_tcp:listen(0, [binary, {packet, 4}, {active, false}]),
    {ok, Port} = inet:port(L),
    Self = self(),
    Srv = spawn_link(fun() -> fake_original_server(L, Self) end),
    {error, {auth_failed, legacy_server}} = fabric_peer:connect("127.0.0.1", Port, "secret", #{}),
    receive {fake_server, closed} -> ok after 3000 -> ct:fail(not_closed) end,
    unlink(Srv),
    exit(Srv, kill),
    gen_tcp:close(L),
    Config.

fake_original_server(L, Parent) ->
    {ok, S} = gen_tcp:accept(L),
    {ok, _Hello} = gen_tcp:recv(S, 0),
    ok = gen_tcp:send(S, vector("02")),
    case gen_tcp:recv(S, 0, 3000) of
        {error, closed} -> Parent ! {fake_server, closed};
        Other -> Parent ! {fake_server, Other}
    end.

%% A server that cannot prove it knows the secret is refused by our client.
server_mac_checked(Config) ->
    {ok, L} = gen_tcp:listen(0, [binary, {packet, 4}, {active, false}]),
    {ok, Port} = inet:port(L),
    spawn_link(fun() ->
                       {ok, S} = gen_tcp:accept(L),
                       {ok, _} = gen_tcp:recv(S, 0),
                       Offer = fabric_peer_handshake:offer(#{version => 1, features => [],
                                                             node => <<"x">>, max_frame => 1000,
                                                             heartbeat => 0}),
                       ok = gen_tcp:send(S, term_to_binary({challenge, crypto:strong_rand_bytes(32), Offer})),
                       {ok, _} = gen_tcp:recv(S, 0),
                       Info = term_to_binary(#{<<"resumed">> => false}),
                       ok = gen_tcp:send(S, term_to_binary({auth, success, crypto:strong_rand_bytes(32), Info})),
                       timer:sleep(1000)
               end),
    {error, {auth_failed, server_not_authenticated}} =
        fabric_peer:connect("127.0.0.1", Port, "secret", #{}),
    gen_tcp:close(L),
    Config.

%% A client that says nothing is closed after handshake_timeout (500 ms here).
handshake_timeout(Config) ->
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{allow_legacy_auth => true,
                                                          handshake_timeout => 500}),
    Port = fabric_peer:port(Srv),
    S = raw_connect(Port),
    T0 = erlang:monotonic_time(millisecond),
    [] = expect_closed(S),
    true = erlang:monotonic_time(millisecond) - T0 < 3000,
    %% stuck after the challenge: {auth, failed} then close
    S2 = raw_connect(Port),
    send(S2, vector("01")),
    {challenge, _} = recv(S2),
    [{auth, failed}] = expect_closed(S2),
    fabric_peer:stop_server(Srv),
    Config.

%% Bad first frames (vectors 40-43) close that connection only; the server keeps serving.
bad_first_frames(Config) ->
    Port = ?config(port, Config),
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    [begin
         S = raw_connect(Port),
         send(S, vector(V)),
         [] = expect_closed(S)
     end || V <- ["40", "41", "42"]],
    S43 = raw_connect(Port),
    send(S43, vector("01")),
    {challenge, _} = recv(S43),
    send(S43, vector("43")),
    [{auth, failed}] = expect_closed(S43),
    Ping ! {self(), still_here},
    receive {Ping, {pong, still_here}} -> ok after 3000 -> ct:fail(disturbed) end,
    fabric_peer:close(C).

%%% server

%% 30 clients in parallel each do 20 ping round trips.
many_concurrent_clients(Config) ->
    Self = self(),
    Pids = [spawn_link(fun() ->
                               C = connect(Config),
                               Ping = fabric_peer:whereis(C, ping),
                               [begin
                                    Ping ! {self(), {I, J}},
                                    receive {Ping, {pong, {I, J}}} -> ok after 5000 -> exit(timeout) end
                                end || J <- lists:seq(1, 20)],
                               fabric_peer:close(C),
                               Self ! {done, I}
                       end) || I <- lists:seq(1, 30)],
    [receive {done, I} -> ok after 20000 -> ct:fail({client_stuck, I}) end
     || I <- lists:seq(1, length(Pids))],
    Config.

%% Connect-and-close (bare, and mid-handshake) while a client is working disturbs nobody.
connect_and_close_does_not_disturb(Config) ->
    Port = ?config(port, Config),
    C = connect(Config),
    Ping = fabric_peer:whereis(C, ping),
    [begin
         S = raw_connect(Port),
         case I rem 3 of
             0 -> ok;
             1 -> send(S, vector("01"));
             2 -> send(S, <<0, 0>>)
         end,
         gen_tcp:close(S),
         Ping ! {self(), I},
         receive {Ping, {pong, I}} -> ok after 3000 -> ct:fail({disturbed, I}) end
     end || I <- lists:seq(1, 30)],
    fabric_peer:close(C),
    C2 = connect(Config),
    true = is_pid(fabric_peer:whereis(C2, ping)),
    fabric_peer:close(C2).

%% stop_server closes the listener and every connection; client proxies end (no reconnect).
stop_server_ends_connections(Config) ->
    {ok, S} = fabric_peer:start_server(0, "s", #{allowed => [ping]}),
    Port = fabric_peer:port(S),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "s", #{reconnect => false}),
    Ping = fabric_peer:whereis(C, ping),
    Ref = monitor(process, Ping),
    ok = fabric_peer:stop_server(S),
    receive {'DOWN', Ref, process, Ping, noconnection} -> ok after 3000 -> ct:fail(no_down) end,
    {error, {connect, econnrefused}} = fabric_peer:connect("127.0.0.1", Port, "s", #{}),
    Config.

%% A port in use is reported as an error.
port_in_use(Config) ->
    {error, eaddrinuse} = fabric_peer:start_server(?config(port, Config), "s", #{}),
    Config.
