%% Hostile input against our server (docs/protocol.md sections 1, 8 and 9): size limits,
%% garbage, the error frame and too_many_errors, the new-atom budget, name policy bypasses,
%% random frames. A well-behaved client keeps being served throughout.
-module(fabric_peer_hostile_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [send/2, recv/1, recv/2, recv_nothing/2, expect_closed/1, ext_login/3,
                               ext_login/2, legacy_login/2]).

all() -> [oversize_before_auth, oversize_after_auth, error_frames_for_extended_peer,
          too_many_errors_closes, atom_budget, whereis_hostile_names, unagreed_feature_frames,
          fuzz_random_frames, good_client_unaffected,
          {group, issue11}].

%% Attacks of issue 11, each against a server of its own (default limits unless the case
%% says otherwise); end_per_testcase checks that the suite's good client is still served.
groups() ->
    [{issue11, [], [amplifying_frame_refused, large_frames_received, foreign_references_no_atoms,
                    distinct_peers_create_no_atoms, dead_reason_keeps_foreign_pids,
                    idle_connections_evicted, client_in_handshake_survives_idle_burst,
                    handshake_timeouts_count, max_connections_refuses,
                    refuse_remote_exits_protects, otp_names_are_system_names]}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, emergency),
    fabric_peer_test_lib:start_ping(hping),
    %% hostile clients fail authentication on purpose: no throttling here
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [hping], allow_legacy_auth => true,
                                                        max_frame => 65536, max_new_atoms => 5,
                                                        max_auth_failures => 0}),
    Port = fabric_peer:port(S),
    %% a well-behaved client that must keep working through every case (its owner, this
    %% init_per_suite process, ends before the cases run)
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret", #{close_with_owner => false}),
    [{server, S}, {port, Port}, {good, C} | Config].

end_per_suite(Config) ->
    fabric_peer:close(?config(good, Config)),
    fabric_peer:stop_server(?config(server, Config)),
    logger:set_primary_config(level, notice),
    Config.

end_per_testcase(_, Config) ->
    check_good(Config),
    Config.

check_good(Config) ->
    C = ?config(good, Config),
    P = fabric_peer:whereis(C, hping),
    Tag = make_ref(),
    P ! {self(), Tag},
    receive {P, {pong, Tag}} -> ok after 3000 -> ct:fail(good_client_disturbed) end.

%% A length header over max_handshake_frame closes before the body is read.
oversize_before_auth(Config) ->
    {ok, S} = gen_tcp:connect("127.0.0.1", ?config(port, Config), [binary, {active, false}]),
    ok = gen_tcp:send(S, <<0, 1, 0, 0, "x">>),
    {error, closed} = gen_tcp:recv(S, 0, 3000).

%% After auth, a header over max_frame gets frame_too_large (extended) and a close.
oversize_after_auth(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    ok = inet:setopts(S, [{packet, raw}]),
    ok = gen_tcp:send(S, <<0, 2, 0, 0, 1, 2, 3>>),
    {ok, <<_:32, Frame/binary>>} = gen_tcp:recv(S, 0, 3000),
    {error, <<"frame_too_large">>, _} = binary_to_term(Frame),
    {error, closed} = gen_tcp:recv(S, 0, 3000),
    %% legacy: just closed
    L = legacy_login(?config(port, Config), "secret"),
    ok = inet:setopts(L, [{packet, raw}]),
    ok = gen_tcp:send(L, <<16#ff, 0, 0, 0>>),
    {error, closed} = gen_tcp:recv(L, 0, 3000).

%% Each dropped frame gets {error, Code, Msg} on an extended connection, which stays up.
error_frames_for_extended_peer(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    Cases = [{<<1, 2, 3>>, <<"bad_term">>},
             {term_to_binary({foo, bar}), <<"unknown_frame">>},
             {term_to_binary({m, 12345, x}), <<"unknown_id">>},
             {term_to_binary({m, rex, x}), <<"not_allowed">>},
             {term_to_binary({m, {init, node()}, x}), <<"not_allowed">>},
             {term_to_binary({m, hping, {a, b}}), <<"bad_payload">>},
             {term_to_binary({m, hping, self()}), <<"bad_payload">>},
             {term_to_binary({m, hping, {t, {fun() -> ok end}}}), <<"bad_term">>}],
    [begin
         send(S, Bin),
         {error, Code, Msg} = recv(S),
         true = is_binary(Msg)
     end || {Bin, Code} <- Cases],
    send(S, term_to_binary({whereis, 1, <<"hping">>})),
    {whereis_reply, 1, {pr, _}} = recv(S),
    gen_tcp:close(S).

%% More than max_errors (20) bad frames in the window closes with too_many_errors.
too_many_errors_closes(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    [send(S, <<1, 2, 3>>) || _ <- lists:seq(1, 21)],
    Frames = expect_closed(S),
    {error, <<"too_many_errors">>, _} = lists:last(Frames),
    21 = length([x || {error, <<"bad_term">>, _} <- Frames]).

%% Unknown atoms are created within max_new_atoms (5 here), then frames are dropped (limit).
atom_budget(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    Atom = fun(I) ->
                   Name = iolist_to_binary(["hostile_atom_", integer_to_list(erlang:unique_integer([positive])),
                                            "_", integer_to_list(I)]),
                   <<119, (byte_size(Name)), Name/binary>>
           end,
    Frame = fun(I) -> <<131, 104, 3, 119, 1, "m", 119, 5, "hping", (Atom(I))/binary>> end,
    [send(S, Frame(I)) || I <- lists:seq(1, 5)],
    recv_nothing(S, 300),
    send(S, Frame(6)),
    {error, <<"limit">>, _} = recv(S),
    %% a reference of an unknown node spends no atom even now: it is translated to a local
    %% reference for this connection, and goes back to the peer as the very same bytes
    Node = <<"evil_node_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@h">>,
    RefBin = <<131, 90, 0, 1, 119, (byte_size(Node)), Node/binary, 0:32, 1:32>>,
    send(S, term_to_binary({m, hping, {t, {{pr, 1}, {r, RefBin}}}})),
    {m, 1, {t, {{pr, 1}, {t, {pong, {r, RefBin}}}}}} = recv(S),
    {'EXIT', _} = (catch binary_to_existing_atom(Node)),
    gen_tcp:close(S).

%% whereis of system names, unknown names, huge names: undefined, never an atom created.
whereis_hostile_names(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    Names = [<<"rex">>, <<"init">>, <<"fabric_peer_sup">>, <<"code_server">>,
             <<"no_such_name_here_123">>, binary:copy(<<"a">>, 5000), <<255, 254>>],
    [begin
         send(S, term_to_binary({whereis, I, N})),
         {whereis_reply, I, undefined} = recv(S)
     end || {I, N} <- lists:zip(lists:seq(1, length(Names)), Names)],
    {'EXIT', _} = (catch binary_to_existing_atom(<<"no_such_name_here_123">>)),
    gen_tcp:close(S).

%% Frames of features the client did not accept are unknown_frame.
unagreed_feature_frames(Config) ->
    {S, _, _} = ext_login(?config(port, Config), "secret", #{<<"features">> => [<<"error">>]}),
    send(S, term_to_binary({whereis, 1, <<"hping">>})),
    {error, <<"unknown_frame">>, _} = recv(S),
    send(S, term_to_binary({m, hping, {t, {{pr, 1}, #{a => 1}}}})),
    {error, <<"bad_payload">>, _} = recv(S),
    send(S, term_to_binary({link, 1, 1})),
    {error, <<"unknown_frame">>, _} = recv(S),
    gen_tcp:close(S).

%% Random and mutated frames on many connections (bounded): the server survives.
fuzz_random_frames(Config) ->
    rand:seed(exsss, {1, 2, 3}),
    Seeds = [term_to_binary(T) || T <- [{m, hping, {t, {{pr, 1}, x}}}, {'DEAD', {pr, 1}, normal},
                                        {r, a, b, 1}, {whereis, 1, <<"hping">>}, {link, 1, 1},
                                        {exit2, 1, 1, {t, {x}}}, {m, 1, [1, 2 | 3]}]],
    [begin
         {S, _, _} = case I rem 2 of
                         0 -> ext_login(?config(port, Config), "secret");
                         1 -> {legacy_login(?config(port, Config), "secret"), x, x}
                     end,
         [send(S, mutate(lists:nth(rand:uniform(length(Seeds)), Seeds))) || _ <- lists:seq(1, 15)],
         gen_tcp:close(S)
     end || I <- lists:seq(1, 20)],
    timer:sleep(200).

mutate(Bin) ->
    case rand:uniform(4) of
        1 -> crypto:strong_rand_bytes(rand:uniform(40));
        2 -> binary:part(Bin, 0, rand:uniform(byte_size(Bin)));
        3 -> flip(Bin);
        4 -> <<131, (crypto:strong_rand_bytes(rand:uniform(30)))/binary>>
    end.

flip(Bin) ->
    P = rand:uniform(byte_size(Bin)) - 1,
    <<A:P/binary, B, C/binary>> = Bin,
    <<A/binary, (B bxor (1 bsl (rand:uniform(8) - 1))), C/binary>>.

%% The good client still works and the server counted errors without crashing.
good_client_unaffected(Config) ->
    check_good(Config),
    #{port := _} = fabric_peer:info(?config(server, Config)).

%%% issue 11

start(Opts) ->
    {ok, S} = fabric_peer:start_server(0, "secret", maps:merge(#{allowed => [hping], allow_legacy_auth => true,
                                                                   max_auth_failures => 0}, Opts)),
    {S, fabric_peer:port(S)}.

%% Peak of erlang:memory(total) over the run of Fun, in MiB above the start.
peak_mib(Fun) ->
    Self = self(),
    Base = erlang:memory(total),
    Sampler = spawn_link(fun() -> sample(Self, Base) end),
    Result = Fun(),
    Sampler ! {stop, self()},
    receive {peak, P} -> {Result, (P - Base) div (1 bsl 20)} end.

sample(Parent, Peak) ->
    receive {stop, Parent} -> Parent ! {peak, max(Peak, erlang:memory(total))}
    after 2 -> sample(Parent, max(Peak, erlang:memory(total)))
    end.

nils(N) -> <<131, 104, 3, 119, 1, "m", 119, 5, "hping", 108, N:32, (binary:copy(<<106>>, N))/binary, 106>>.

%% A compressed frame of 16 KB holding 16 million [] (the VM died under a 4 GiB cap):
%% refused from its declared count before anything is decoded, at a small memory cost.
amplifying_frame_refused(_Config) ->
    {Srv, Port} = start(#{}),
    {S, _, _} = ext_login(Port, "secret"),
    <<131, Plain/binary>> = nils(16 bsl 20),
    Z = <<131, 80, (byte_size(Plain)):32, (zlib:compress(Plain))/binary>>,
    true = byte_size(Z) < 20000,
    {{error, <<"bad_term">>, <<"too_many_terms">>}, Mib} =
        peak_mib(fun() -> send(S, Z), recv(S, 30000) end),
    ct:log("16M [] compressed (~b bytes): refused, peak +~b MiB", [byte_size(Z), Mib]),
    true = Mib < 200,
    %% 1 MB of [] uncompressed is within the bounds: accepted, at a bounded cost
    send(S, term_to_binary({m, hping, {t, {{pr, 1}, x}}})),
    {m, 1, _} = recv(S),
    {_, Mib2} = peak_mib(fun() -> send(S, nils(1 bsl 20)), send(S, {heartbeat, 1}),
                                  {heartbeat_ack, 1} = recv(S, 30000) end),
    ct:log("1M [] uncompressed: peak +~b MiB", [Mib2]),
    true = Mib2 < 200,
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

%% Large frames arrive in linear time (16 MiB took 51 s when the buffer was re-joined per
%% chunk); the bound is generous: far more than linear needs.
large_frames_received(_Config) ->
    {Srv, Port} = start(#{}),
    {S, _, _} = ext_login(Port, "secret"),
    ok = inet:setopts(S, [{packet, raw}]),
    [begin
         Body = term_to_binary({m, hping, {t, {{pr, 1}, crypto:strong_rand_bytes(Mib bsl 20 - 64)}}}),
         Hb = term_to_binary({heartbeat, Mib}),
         {T, _} = timer:tc(fun() ->
                                   ok = gen_tcp:send(S, [<<(byte_size(Body)):32>>, Body,
                                                         <<(byte_size(Hb)):32>>, Hb]),
                                   wait_ack(S, term_to_binary({heartbeat_ack, Mib}), <<>>)
                           end),
         ct:log("~b MiB frame: ~b ms", [Mib, T div 1000]),
         true = T < (2 + Mib div 2) * 1000000
     end || Mib <- [1, 4, 16]],
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

wait_ack(S, Ack, Buf) ->
    case binary:match(Buf, Ack) of
        nomatch ->
            {ok, More} = gen_tcp:recv(S, 0, 60000),
            wait_ack(S, Ack, <<Buf/binary, More/binary>>);
        _ -> ok
    end.

%% References of many distinct unknown nodes (every Python client has its own node name)
%% create no atom: they are translated per connection, and come back as the same bytes.
foreign_references_no_atoms(_Config) ->
    {Srv, Port} = start(#{}),
    {S, _, _} = ext_login(Port, "secret"),
    Ref = fun(I) ->
                  Node = <<"py_", (integer_to_binary(I + 16#5a000000, 16))/binary, "@nohost">>,
                  <<131, 90, 0, 3, 119, (byte_size(Node)), Node/binary, 7:32, I:32, 1:32, 2:32>>
          end,
    send(S, {m, hping, {t, {{pr, 1}, {r, Ref(0)}}}}),
    {m, 1, _} = recv(S),
    Atoms = erlang:system_info(atom_count),
    [begin
         send(S, {m, hping, {t, {{pr, 1}, {r, Ref(I)}}}}),
         {m, 1, {t, {{pr, 1}, {t, {pong, {r, Back}}}}}} = recv(S),
         Back = Ref(I)
     end || I <- lists:seq(1, 2000)],
    Atoms = erlang:system_info(atom_count),
    #{new_atoms := 0} = fabric_peer:info(Srv),
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

%% 2,000 successive short-lived clients of a routing server, each with its own client node
%% name (16.1), each sending a port and a reference of a node of its own, a raw pid of
%% another, and a message by `{Name, Node}' to the client before it: the server's atom count
%% stays flat (node names stay binaries, also as a destination, the port and the reference
%% are translated and come back as the same bytes, the raw pid is refused before its node
%% becomes an atom), its atom budget is untouched, every routed message arrives, and the
%% server keeps serving.
distinct_peers_create_no_atoms(_Config) ->
    {Srv, Port} = start(#{routing => true}),
    U = integer_to_binary(erlang:unique_integer([positive])),
    Node = fun(Tag, I) -> <<Tag/binary, U/binary, "_", (integer_to_binary(I))/binary, "@nohost">> end,
    Atom = fun(N) -> <<119, (byte_size(N)), N/binary>> end,
    One = fun(I, Prev) ->
                  {S, _, _} = ext_login(Port, "secret", #{<<"node">> => Node(<<"client">>, I),
                                                           <<"heartbeat">> => 1000}),
                  PortBin = <<131, 89, (Atom(Node(<<"port">>, I)))/binary, I:32, 1:32>>,
                  RefBin = <<131, 90, 0, 3, (Atom(Node(<<"ref">>, I)))/binary, 7:32, I:32, 1:32, 2:32>>,
                  RawPid = <<88, (Atom(Node(<<"pid">>, I)))/binary, 0:32, 0:32, 1:32>>,
                  send(S, {m, hping, {t, {{pr, 1}, {t, {{po, PortBin}, {r, RefBin}}}}}}),
                  {m, 1, {t, {{pr, _}, {t, {pong, {t, {{po, PortBin}, {r, RefBin}}}}}}}} = recv_skipping_notices(S),
                  %% {m, hping, [RawPid]}: a raw pid never travels (section 4.1)
                  send(S, <<131, 104, 3, 119, 1, "m", 119, 5, "hping", 108, 1:32, RawPid/binary, 106>>),
                  {error, <<"bad_payload">>, _} = recv_skipping_notices(S),
                  %% {m, {svc, PrevNode}, {t, {hello, I}}} to the client before: it gets
                  %% {m, svc, ...} (its node name is no atom here)
                  <<131, Hello/binary>> = term_to_binary({t, {hello, I}}),
                  send(S, <<131, 104, 3, 119, 1, "m", 104, 2, 119, 3, "svc",
                            (Atom(Node(<<"client">>, I - 1)))/binary, Hello/binary>>),
                  {m, svc, {t, {hello, I}}} = recv_skipping_notices(Prev),
                  gen_tcp:close(Prev),
                  S
          end,
    {S0, _, _} = ext_login(Port, "secret", #{<<"node">> => Node(<<"client">>, -1),
                                              <<"heartbeat">> => 1000}),
    S1 = One(0, S0),
    Before = erlang:system_info(atom_count),
    T0 = erlang:monotonic_time(millisecond),
    Last = lists:foldl(One, S1, lists:seq(1, 2000)),
    gen_tcp:close(Last),
    After = erlang:system_info(atom_count),
    ct:pal("2000 clients in ~b ms: atom count ~b -> ~b",
           [erlang:monotonic_time(millisecond) - T0, Before, After]),
    true = After - Before =< 5,
    [{'EXIT', _} = (catch binary_to_existing_atom(Node(K, 2000)))
     || K <- [<<"client">>, <<"port">>, <<"ref">>, <<"pid">>]],
    #{new_atoms := 0} = fabric_peer:info(Srv),
    %% still serving
    {S, _, _} = ext_login(Port, "secret", #{<<"node">> => Node(<<"client">>, 1), <<"heartbeat">> => 1000}),
    send(S, {m, hping, {t, {{pr, 1}, last}}}),
    {m, 1, _} = recv(S),
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

%% A DEAD's reason is raw (section 4.4): a pid in it of a node unknown here is decoded (its
%% node name a new atom, within the budget), so the proxy ends with the real reason and the
%% links and monitors on it see it; a raw pid anywhere else is still refused.
dead_reason_keeps_foreign_pids(_Config) ->
    Self = self(),
    Watcher = spawn_link(fun() ->
                                 receive {From, x} ->
                                         Ref = monitor(process, From),
                                         Self ! watching,
                                         receive {'DOWN', Ref, process, _, R} -> Self ! {down, R} end
                                 end
                         end),
    register(hwatch, Watcher),
    {Srv, Port} = start(#{allowed => [hwatch]}),
    {S, _, _} = ext_login(Port, "secret"),
    send(S, {m, hwatch, {t, {{pr, 1}, x}}}),
    receive watching -> ok after 3000 -> ct:fail(no_proxy) end,
    N = <<"deadpid", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@nohost">>,
    RawPid = <<88, 119, (byte_size(N)), N/binary, 5:32, 0:32, 1:32>>,
    %% {'DEAD', {pr, 1}, {shutdown, RawPid}}
    send(S, <<131, 104, 3, 119, 4, "DEAD", 104, 2, 119, 2, "pr", 97, 1,
              104, 2, 119, 8, "shutdown", RawPid/binary>>),
    receive
        {down, {shutdown, P}} when is_pid(P) -> N = atom_to_binary(node(P))
    after 3000 -> ct:fail(proxy_did_not_end)
    end,
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

%% The next frame that is not a `nodeup' / `nodedown' notice (16.6).
recv_skipping_notices(S) ->
    case recv(S) of
        {N, _} when N =:= nodeup; N =:= nodedown -> recv_skipping_notices(S);
        F -> F
    end.

%% Idle sockets cannot lock clients out: beyond max_pending_per_address the oldest pending
%% connection of the address is evicted, and a new client gets in.
idle_connections_evicted(_Config) ->
    {Srv, Port} = start(#{max_pending_per_address => 10}),
    Idle = [begin
                {ok, I} = gen_tcp:connect("127.0.0.1", Port, [binary, {active, false}]),
                I
            end || _ <- lists:seq(1, 50)],
    timer:sleep(300),
    L = legacy_login(Port, "secret"),
    gen_tcp:close(L),
    Open = [I || I <- Idle, gen_tcp:recv(I, 0, 50) =:= {error, timeout}],
    ct:log("~b of 50 idle connections still open", [length(Open)]),
    true = length(Open) =< 10,
    [gen_tcp:close(I) || I <- Idle],
    fabric_peer:stop_server(Srv).

%% A client that sent its hello is not evicted by a burst of idle connections from its
%% address: they evict each other (the oldest silent one first), and it authenticates.
client_in_handshake_survives_idle_burst(_Config) ->
    {Srv, Port} = start(#{max_pending_per_address => 3}),
    S = fabric_peer_test_lib:raw_connect(Port),
    send(S, fabric_peer_test_lib:vector("01")),
    {challenge, C} = recv(S),
    Idle = [begin
                {ok, I} = gen_tcp:connect("127.0.0.1", Port, [binary, {active, false}]),
                I
            end || _ <- lists:seq(1, 30)],
    %% every idle one was admitted (its pending entry is there) before the client goes on
    true = fabric_peer_test_lib:wait_until(
             fun() -> length([I || I <- Idle, gen_tcp:recv(I, 0, 1) =:= {error, timeout}]) =< 2 end),
    send(S, {response, fabric_peer_test_lib:md5hex(C ++ "secret")}),
    {auth, success} = recv(S),
    [gen_tcp:close(I) || I <- Idle],
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).

%% A handshake that times out counts in the per-address throttle.
handshake_timeouts_count(_Config) ->
    {Srv, Port} = start(#{max_auth_failures => 2, handshake_timeout => 200}),
    Idle = [begin
                {ok, I} = gen_tcp:connect("127.0.0.1", Port, [binary, {active, false}]),
                I
            end || _ <- lists:seq(1, 2)],
    [{error, closed} = gen_tcp:recv(I, 0, 3000) || I <- Idle],
    %% blocked now: even a client with the right secret is refused
    {ok, S} = gen_tcp:connect("127.0.0.1", Port, [binary, {packet, 4}, {active, false}]),
    {error, closed} = gen_tcp:recv(S, 0, 3000),
    fabric_peer:stop_server(Srv).

%% max_connections: when every connection is authenticated, a new one is refused.
max_connections_refuses(_Config) ->
    {Srv, Port} = start(#{max_connections => 3}),
    Ls = [legacy_login(Port, "secret") || _ <- lists:seq(1, 3)],
    {ok, S} = gen_tcp:connect("127.0.0.1", Port, [binary, {packet, 4}, {active, false}]),
    {error, closed} = gen_tcp:recv(S, 0, 3000),
    %% a pending one is evicted for a new one instead
    gen_tcp:close(hd(Ls)),
    timer:sleep(100),
    {ok, P} = gen_tcp:connect("127.0.0.1", Port, [binary, {packet, 4}, {active, false}]),
    timer:sleep(100),
    L4 = legacy_login(Port, "secret"),
    {error, closed} = gen_tcp:recv(P, 0, 3000),
    [gen_tcp:close(X) || X <- [L4 | tl(Ls)]],
    fabric_peer:stop_server(Srv).

%% refuse_remote_exits: exit2, link and link_exit frames to protected names are refused (not_allowed); others
%% still work.
refuse_remote_exits_protects(_Config) ->
    Obs = self(),
    Prot = fabric_peer_test_lib:unique_name("protected"),
    Free = fabric_peer_test_lib:unique_name("unprotected"),
    [true = register(N, spawn(fun() -> fabric_peer_test_lib:victim(Obs, N) end)) || N <- [Prot, Free]],
    {Srv, Port} = start(#{allowed => [Prot, Free], refuse_remote_exits => [Prot]}),
    {S, _, _} = ext_login(Port, "secret"),
    Id = fun(N, Req) ->
                 send(S, {whereis, Req, atom_to_binary(N)}),
                 {whereis_reply, Req, {pr, I}} = recv(S),
                 I
         end,
    P = Id(Prot, 1),
    send(S, {exit2, 1, P, kill}),
    {error, <<"not_allowed">>, _} = recv(S),
    send(S, {link, 1, P}),
    {error, <<"not_allowed">>, _} = recv(S),
    send(S, {link_exit, 1, P, kill}),
    {error, <<"not_allowed">>, _} = recv(S),
    timer:sleep(100),
    true = is_process_alive(whereis(Prot)),
    F = Id(Free, 2),
    Victim = whereis(Free),
    Mon = erlang:monitor(process, Victim),
    send(S, {exit2, 1, F, kill}),
    receive {'DOWN', Mon, process, Victim, killed} -> ok after 3000 -> ct:fail(not_killed) end,
    gen_tcp:close(S),
    exit(whereis(Prot), kill),
    fabric_peer:stop_server(Srv).

%% Names registered by OTP applications are system names without being listed (the list
%% missed logger_proxy and others): allowed by mistake, they stay unreachable.
otp_names_are_system_names(_Config) ->
    Names = [N || N <- [logger_proxy, logger_handler_watcher, logger_std_h_default, code_server],
                  is_pid(whereis(N))],
    {Srv, Port} = start(#{allowed => Names}),
    {S, _, _} = ext_login(Port, "secret"),
    [begin
         send(S, {whereis, I, atom_to_binary(N)}),
         {whereis_reply, I, undefined} = recv(S)
     end || {I, N} <- lists:zip(lists:seq(1, length(Names)), Names)],
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv).
