%% Security parity with the Python side (README "Security"): safe TLS defaults, the host name
%% check, mutual TLS (certificates generated for the run with public_key:pkix_test_data/1),
%% per-address throttling of failed authentications, and the per-connection limits
%% max_proxies / max_exports / max_kept_sessions.
-module(fabric_peer_security_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("public_key/include/public_key.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [send/2, recv/1, ext_login/2]).

all() -> [{group, tls}, {group, throttle}, {group, limits}].

groups() ->
    [{tls, [], [tls_client_needs_a_ca, tls_old_versions_refused, tls_verified_by_ip_and_name,
                tls_host_name_checked, mutual_tls, tls_errors_read_well, not_a_fabric_server,
                tls_stream_reads_on]},
     {throttle, [], [failed_auths_block_the_address, throttle_disabled_with_zero]},
     {limits, [], [max_proxies_drops_the_frame, max_exports_refuses_the_send,
                   max_kept_sessions_expires_the_oldest]}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    {ok, _} = application:ensure_all_started(ssl),
    logger:set_primary_config(level, emergency),
    fabric_peer_test_lib:start_ping(sping),
    Good = certs([{dNSName, "localhost"}, {iPAddress, <<127, 0, 0, 1>>}]),
    NameOnly = certs([{dNSName, "elsewhere.example"}]),
    [{good, Good}, {name_only, NameOnly} | Config].

end_per_suite(Config) ->
    logger:set_primary_config(level, notice),
    Config.

init_per_testcase(_, Config) -> fabric_peer_test_lib:flush(), Config.
end_per_testcase(_, Config) -> Config.

%% A CA, a server certificate with the given subject alternative names, a client certificate
%% (ECDSA P-256), all made for this run.
certs(SANs) ->
    Key = [{key, {namedCurve, secp256r1}}],
    San = #'Extension'{extnID = ?'id-ce-subjectAltName', extnValue = SANs, critical = false},
    public_key:pkix_test_data(#{server_chain => #{root => Key, intermediates => [],
                                                  peer => [{extensions, [San]} | Key]},
                                client_chain => #{root => Key, intermediates => [],
                                                  peer => Key}}).

server_tls(#{server_config := SC}) -> [{K, V} || {K, V} <- SC, K =/= cacerts].
%% the CA that signed the server (what a client trusts)
server_ca(#{client_config := CC}) -> proplists:get_value(cacerts, CC).
client_cert(#{client_config := CC}) -> [{K, V} || {K, V} <- CC, K =/= cacerts].
%% the CA that signed the client (what a server checking clients trusts)
client_ca(#{server_config := SC}) -> proplists:get_value(cacerts, SC).

tls_server(Certs, Extra) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [sping],
                                                      tls => server_tls(Certs) ++ Extra}),
    S.

ping(C) ->
    P = fabric_peer:whereis(C, sping),
    P ! {self(), tls},
    receive {P, {pong, tls}} -> ok after 3000 -> ct:fail(no_pong) end.

%%% tls

%% A TLS client verifies the server by default: without a CA it is refused, with a clear reason.
tls_client_needs_a_ca(Config) ->
    S = tls_server(?config(good, Config), []),
    {error, {bad_option, {tls, {verify_peer, Why}}}} =
        fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret", #{tls => []}),
    true = string:find(Why, "cacertfile") =/= nomatch,
    %% explicitly unverified (logged as a warning) still connects
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret",
                                  #{tls => [{verify, verify_none}]}),
    ping(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% Only TLS 1.2 and 1.3: older versions are refused as options on both sides.
tls_old_versions_refused(Config) ->
    Good = ?config(good, Config),
    {error, {bad_option, {tls, {versions, ['tlsv1.1'], _}}}} =
        fabric_peer:start_server(0, "secret", #{tls => server_tls(Good) ++ [{versions, ['tlsv1.1']}]}),
    {error, {bad_option, {tls, {versions, _, _}}}} =
        fabric_peer:connect("127.0.0.1", 1, "secret",
                            #{tls => [{cacerts, server_ca(Good)}, {versions, ['tlsv1.2', tlsv1]}]}),
    S = tls_server(Good, [{versions, ['tlsv1.2']}]),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret",
                                  #{tls => [{cacerts, server_ca(Good)}]}),
    ping(C),
    #{transport := tls} = fabric_peer:info(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% The default check accepts the server by its IP address (an IP SAN) and by its name.
tls_verified_by_ip_and_name(Config) ->
    Good = ?config(good, Config),
    S = tls_server(Good, []),
    Tls = #{tls => [{cacerts, server_ca(Good)}], reconnect => false},
    [begin
         {ok, C} = fabric_peer:connect(Host, fabric_peer:port(S), "secret", Tls),
         ping(C),
         fabric_peer:close(C)
     end || Host <- ["127.0.0.1", {127, 0, 0, 1}, "localhost"]],
    fabric_peer:stop_server(S).

%% An established TLS connection reads on by itself ({active, N}, then `ssl_passive'): a
%% stream of many reads each way arrives whole and in order.
tls_stream_reads_on(Config) ->
    Good = ?config(good, Config),
    S = tls_server(Good, []),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret",
                                  #{tls => [{cacerts, server_ca(Good)}], reconnect => false}),
    P = fabric_peer:whereis(C, sping),
    Big = binary:copy(<<"x">>, 20000),
    N = 300,
    [P ! {self(), {I, Big}} || I <- lists:seq(1, N)],
    [receive {P, {pong, {J, B}}} -> {I, Big} = {J, B}
     after 10000 -> ct:fail({missing, I})
     end || I <- lists:seq(1, N)],
    ping(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% A certificate that does not name the host is refused (here: no IP SAN for 127.0.0.1), as
%% is one signed by another CA.
tls_host_name_checked(Config) ->
    NameOnly = ?config(name_only, Config),
    S = tls_server(NameOnly, []),
    Port = fabric_peer:port(S),
    {error, _} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                     #{tls => [{cacerts, server_ca(NameOnly)}], reconnect => false}),
    {error, _} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                     #{tls => [{cacerts, server_ca(?config(good, Config))}],
                                       reconnect => false}),
    %% the name it does carry passes
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                  #{tls => [{cacerts, server_ca(NameOnly)},
                                            {server_name_indication, "elsewhere.example"}]}),
    ping(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%% verify_peer on a server: clients must present a certificate signed by its CA.
mutual_tls(Config) ->
    Good = ?config(good, Config),
    Other = ?config(name_only, Config),
    S = tls_server(Good, [{verify, verify_peer}, {cacerts, client_ca(Good)}]),
    Port = fabric_peer:port(S),
    Base = [{cacerts, server_ca(Good)}],
    {error, _} = fabric_peer:connect("127.0.0.1", Port, "secret", #{tls => Base, reconnect => false}),
    {error, _} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                     #{tls => Base ++ client_cert(Other), reconnect => false}),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret", #{tls => Base ++ client_cert(Good)}),
    ping(C),
    fabric_peer:close(C),
    {error, {bad_option, {tls, {verify_peer, _}}}} =
        fabric_peer:start_server(0, "secret", #{tls => server_tls(Good) ++ [{verify, verify_peer}]}),
    fabric_peer:stop_server(S).

%% Each TLS mismatch is reported as what it is (issue 11, item 7).
tls_errors_read_well(Config) ->
    Good = ?config(good, Config),
    Base = [{cacerts, server_ca(Good)}],
    Opts = #{reconnect => false, connect_timeout => 3000, handshake_timeout => 3000},
    %% a plain client facing a TLS server
    S1 = tls_server(Good, []),
    {error, {connect, {not_fabric, Why1}}} =
        fabric_peer:connect("127.0.0.1", fabric_peer:port(S1), "secret", Opts),
    ct:log("plain client, TLS server: ~s", [Why1]),
    match(<<"the server speaks TLS">>, Why1),
    fabric_peer:stop_server(S1),
    %% a client without a certificate facing a server that requires one
    S2 = tls_server(Good, [{verify, verify_peer}, {cacerts, client_ca(Good)}]),
    {error, {connect, {tls, Why2}}} =
        fabric_peer:connect("127.0.0.1", fabric_peer:port(S2), "secret", Opts#{tls => Base}),
    ct:log("no client certificate: ~s", [Why2]),
    match(<<"the server requires a client certificate">>, Why2),
    fabric_peer:stop_server(S2),
    %% a TLS client facing a plain server
    {ok, S3} = fabric_peer:start_server(0, "secret", #{}),
    {error, {connect, {tls, Why3}}} =
        fabric_peer:connect("127.0.0.1", fabric_peer:port(S3), "secret", Opts#{tls => Base}),
    ct:log("TLS client, plain server: ~s", [Why3]),
    match(<<"does not speak TLS">>, Why3),
    fabric_peer:stop_server(S3).

%% A service on the port that is not a fabric server (an HTTP reply, a short garbage frame).
not_a_fabric_server(_Config) ->
    Opts = #{reconnect => false, connect_timeout => 3000, handshake_timeout => 3000},
    [begin
         {ok, L} = gen_tcp:listen(0, [binary, {active, false}, {ip, {127, 0, 0, 1}}]),
         {ok, Port} = inet:port(L),
         Srv = spawn_link(fun() ->
                                  {ok, A} = gen_tcp:accept(L),
                                  _ = gen_tcp:recv(A, 0, 3000),
                                  ok = gen_tcp:send(A, Reply),
                                  receive stop -> ok end
                          end),
         {error, {connect, {not_fabric, Why}}} =
             fabric_peer:connect("127.0.0.1", Port, "secret", Opts),
         ct:log("~p: ~s", [Reply, Why]),
         match(<<"this is not a fabric server">>, Why),
         Srv ! stop,
         gen_tcp:close(L)
     end || Reply <- [<<"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n">>,
                      <<0, 0, 0, 3, 1, 2, 3>>]].

match(Part, Text) ->
    case binary:match(Text, Part) of
        nomatch -> ct:fail({expected, Part, in, Text});
        _ -> ok
    end.

%%% throttle

%% max_auth_failures wrong secrets from an address: its next connections are refused (even
%% with the right secret) for auth_block_time; another server is not affected.
failed_auths_block_the_address(_Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [sping], max_auth_failures => 3,
                                                      auth_block_time => 600000}),
    {ok, Other} = fabric_peer:start_server(0, "secret", #{allowed => [sping]}),
    Port = fabric_peer:port(S),
    [{error, {auth_failed, refused_by_server}} =
         fabric_peer:connect("127.0.0.1", Port, "WRONG", #{reconnect => false})
     || _ <- lists:seq(1, 3)],
    {error, _} = fabric_peer:connect("127.0.0.1", Port, "secret", #{reconnect => false}),
    %% refused before any handshake: the socket is closed without a challenge
    {ok, Raw} = gen_tcp:connect("127.0.0.1", Port, [binary, {packet, 4}, {active, false}]),
    {error, closed} = gen_tcp:recv(Raw, 0, 5000),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(Other), "secret", #{}),
    ping(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(Other),
    fabric_peer:stop_server(S).

%% max_auth_failures => 0: no throttling.
throttle_disabled_with_zero(_Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [sping], max_auth_failures => 0}),
    Port = fabric_peer:port(S),
    [{error, {auth_failed, _}} = fabric_peer:connect("127.0.0.1", Port, "WRONG", #{reconnect => false})
     || _ <- lists:seq(1, 8)],
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret", #{}),
    ping(C),
    fabric_peer:close(C),
    fabric_peer:stop_server(S).

%%% limits

%% A frame that would create a proxy beyond max_proxies is dropped with `limit' (error frame
%% to an extended peer), including proxies it made before reaching the limit; the connection
%% stays up and known ids keep working.
max_proxies_drops_the_frame(_Config) ->
    Self = self(),
    {ok, S} = fabric_peer:start_server(0, "secret", #{max_proxies => 3}),
    {Name, Coll} = fabric_peer_test_lib:remote(S, "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    {Sock, _, _} = ext_login(fabric_peer:port(S), "secret"),
    send(Sock, {m, Name, {t, {a, {pr, 1}, {pr, 2}}}}),
    receive {coll, {a, _, _}} -> ok after 3000 -> ct:fail(not_delivered) end,
    send(Sock, {m, Name, {t, {b, {pr, 3}, {pr, 4}}}}),
    {error, <<"limit">>, _} = recv_skipping_heartbeats(Sock),
    [#{proxies := 2}] = [I || I <- maps:get(conns, fabric_peer:info(S))],
    send(Sock, {m, Name, {t, {c, {pr, 3}, {pr, 1}}}}),
    receive {coll, {c, _, _}} -> ok after 3000 -> ct:fail(not_delivered) end,
    [#{proxies := 3, errors := 1}] = maps:get(conns, fabric_peer:info(S)),
    receive {coll, {b, _, _}} -> ct:fail(dropped_frame_delivered) after 0 -> ok end,
    gen_tcp:close(Sock),
    exit(Coll, kill),
    fabric_peer:stop_server(S).

%% A send that would export a pid beyond max_exports returns {error, {limit, max_exports}}
%% and sends nothing; an export is released when its process ends.
max_exports_refuses_the_send(_Config) ->
    Self = self(),
    {ok, S} = fabric_peer:start_server(0, "secret", #{}),
    {Name, Coll} = fabric_peer_test_lib:remote(S, "collector",
                                               fun() -> fabric_peer_test_lib:collector(Self, coll) end),
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer:port(S), "secret", #{max_exports => 2}),
    Spawn = fun() -> spawn(fun() -> receive stop -> ok end end) end,
    [P1, P2, P3] = [Spawn(), Spawn(), Spawn()],
    ok = fabric_peer:send({C, Name}, {one, P1}),
    Proxy1 = receive {coll, {one, X}} -> X after 3000 -> ct:fail(not_delivered) end,
    ok = fabric_peer:send({C, Name}, {two, P2}),
    {error, {limit, max_exports}} = fabric_peer:send({C, Name}, {three, P3}),
    ok = fabric_peer:send({C, Name}, {again, P1, P2}),
    receive {coll, {two, _}} -> ok after 3000 -> ct:fail(not_delivered) end,
    receive {coll, {again, Proxy1, _}} -> ok after 3000 -> ct:fail(not_delivered) end,
    receive {coll, {three, _}} -> ct:fail(refused_send_delivered) after 0 -> ok end,
    %% P1 ends: once its DEAD has ended the peer's proxy, its export slot is free
    Ref = monitor(process, Proxy1),
    P1 ! stop,
    receive {'DOWN', Ref, process, Proxy1, normal} -> ok after 3000 -> ct:fail(no_dead) end,
    ok = fabric_peer:send({C, Name}, {four, P3}),
    receive {coll, {four, _}} -> ok after 3000 -> ct:fail(not_delivered) end,
    fabric_peer:close(C),
    exit(Coll, kill),
    fabric_peer:stop_server(S).

%% More detached sessions than max_kept_sessions: the oldest waiting one expires at once.
max_kept_sessions_expires_the_oldest(_Config) ->
    {ok, S} = fabric_peer:start_server(0, "secret", #{max_kept_sessions => 1,
                                                      session_timeout => 600000}),
    {fabric_peer_server, Ref, _} = S,
    Port = fabric_peer:port(S),
    Session = fun() ->
                      {Sock, _, #{<<"session">> := Sid}} = ext_login(Port, "secret"),
                      %% the server records the session once frame 4 is written: wait for it
                      true = fabric_peer_test_lib:wait_until(
                               fun() -> is_pid(fabric_peer_registry:session_owner(Ref, Sid)) end),
                      Pid = fabric_peer_registry:session_owner(Ref, Sid),
                      {Sock, Pid}
              end,
    {Sock1, Conn1} = Session(),
    Mon1 = monitor(process, Conn1),
    gen_tcp:close(Sock1),
    true = fabric_peer_test_lib:wait_until(
             fun() -> element(1, sys:get_state(Conn1)) =:= detached end),
    {Sock2, Conn2} = Session(),
    Mon2 = monitor(process, Conn2),
    gen_tcp:close(Sock2),
    receive {'DOWN', Mon1, process, Conn1, _} -> ok after 5000 -> ct:fail(oldest_kept) end,
    true = fabric_peer_test_lib:wait_until(
             fun() -> element(1, sys:get_state(Conn2)) =:= detached end),
    receive {'DOWN', Mon2, process, Conn2, _} -> ct:fail(newest_expired) after 0 -> ok end,
    #{detached_sessions := 1} = fabric_peer:info(S),
    fabric_peer:stop_server(S).

recv_skipping_heartbeats(S) ->
    case recv(S) of
        {heartbeat, _} -> recv_skipping_heartbeats(S);
        T -> T
    end.
