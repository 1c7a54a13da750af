%% Replay of the frames recorded from the original 2010 implementation (conformance/legacy)
%% over raw gen_tcp sockets. C->S frames go to our server (legacy md5 handshake with
%% allow_legacy_auth => true) and the replies are compared with the original server's
%% replies; the frames that crashed the original (33, 40-53) are handled per the error
%% policy. S->C frames are played by a fake original server against our client in legacy mode.
-module(fabric_peer_vectors_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [raw_connect/1, send/2, recv/1, recv_nothing/2, expect_closed/1,
                               legacy_login/2, vector/1, vector_term/1]).

all() -> [{group, client_frames}, {group, handshake}, {group, server_frames}].

groups() ->
    [{client_frames, [sequence],
      [rich_payload_pong, non_tuple_payload, big_binaries, send_to_returned_pid,
       ship_pid_and_pl_echo, dead_reasons, unallowed_and_bypass_names, fun_payload_dropped,
       hand_made_uncompressed, r_frame_proxy, crashing_frames_dropped, pl_unknown_id_substituted,
       connection_survived]},
     {handshake, [], [hello_is_vector_01, wrong_secret_vector_05, bad_hellos_40_42,
                      short_response_43, legacy_refused_by_default]},
     {server_frames, [], [client_against_original_server]}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    Self = self(),
    Obs = spawn(fun() -> observer_loop(Self) end),
    Simple = spawn(fun() -> fabric_peer_test_lib:simple_server(Obs) end),
    register(simple_server, Simple),
    Private = spawn(fun() -> fabric_peer_test_lib:collector(Obs, private_proc) end),
    register(private_proc, Private),
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [simple_server, fabric_rpc],
                                                        allow_legacy_auth => true,
                                                        max_auth_failures => 0}),
    Sock = legacy_login(fabric_peer:port(S), "secret"),
    %% init_per_suite's process ends: give the socket to a process that outlives it
    Holder = spawn(fun() -> receive stop -> ok end end),
    ok = gen_tcp:controlling_process(Sock, Holder),
    [{server, S}, {port, fabric_peer:port(S)}, {sock, Sock}, {observer, Obs} | Config].

end_per_suite(Config) ->
    fabric_peer:stop_server(?config(server, Config)),
    Config.

%% The suite's observer: whatever simple_server and private_proc receive is kept here and
%% handed to the test case process that asks.
observer_loop(_) -> observer_loop_q([]).
observer_loop_q(Q) ->
    receive
        {get, From} ->
            case Q of
                [H | T] -> From ! {observed, H}, observer_loop_q(T);
                [] -> receive M -> From ! {observed, M}, observer_loop_q([])
                      after 2000 -> From ! {observed, none}, observer_loop_q([]) end
            end;
        {clear, From} -> From ! cleared, observer_loop_q([]);
        M -> observer_loop_q(Q ++ [M])
    end.

observed(Config) ->
    ?config(observer, Config) ! {get, self()},
    receive {observed, M} -> M after 5000 -> none end.

nothing_observed(Config) ->
    timer:sleep(200),
    ?config(observer, Config) ! {clear, self()},
    receive cleared -> ok end.

%% Send a C->S vector, expect the reply equal (as a term) to an S->C vector.
exchange(Config, In, Out) ->
    S = ?config(sock, Config),
    send(S, vector(In)),
    Expected = vector_term(Out),
    Expected = recv(S).

%%% C->S replay on one connection (in order, as recorded)

%% 07 -> 08: the rich compressed payload; our reply is the original's reply term for term.
rich_payload_pong(Config) ->
    exchange(Config, "07", "08"),
    {simple_server, {P, {payload, "abababa", <<1, 2, 3>>, 3.5, _, _, _, Ref, -42, 300, atom_x, [], <<>>,
                         1.0e-300, [1, 2 | improper]}}} = observed(Config),
    true = fabric_peer:is_proxy(P),
    true = is_reference(Ref),
    cli@vm = node(Ref).

%% 09: a payload that is not a tuple is delivered as is.
non_tuple_payload(Config) ->
    send(?config(sock, Config), vector("09")),
    {simple_server, just_an_atom} = observed(Config).

%% 10 -> 11 (compressed zero binary), 12 -> 13 (incompressible binary).
big_binaries(Config) ->
    exchange(Config, "10", "11"),
    exchange(Config, "12", "13"),
    {simple_server, _} = observed(Config),
    {simple_server, _} = observed(Config).

%% 14 -> 15: sending to the integer id of simple_server (the pid returned in the pong).
send_to_returned_pid(Config) ->
    exchange(Config, "14", "15"),
    {simple_server, {_, again}} = observed(Config).

%% 16 -> 17: a shipped pid {pr,2} becomes a proxy; echoed back it is {pl,2}.
ship_pid_and_pl_echo(Config) ->
    exchange(Config, "16", "17"),
    {simple_server, {_, {watch, W}}} = observed(Config),
    true = fabric_peer:is_proxy(W),
    %% 18: DEAD {pr,2} normal ends that proxy with normal
    Ref = monitor(process, W),
    send(?config(sock, Config), vector("18")),
    receive {'DOWN', Ref, process, W, normal} -> ok after 3000 -> ct:fail(no_down) end.

%% 19-22: DEAD reasons (custom with float, badarith stack, killed, noproc -> normal).
dead_reasons(Config) ->
    S = ?config(sock, Config),
    lists:foreach(
      fun({Id, V, Expected}) ->
              %% ship {pr, Id} first so that the server has a proxy for it
              send(S, term_to_binary({m, simple_server, {t, {{pr, 1}, {t, {watch, {pr, Id}}}}}},
                                     [{minor_version, 1}])),
              {m, 1, {t, {pong, {pr, 1}, {t, {watch, {pl, Id}}}}}} = recv(S),
              {simple_server, {_, {watch, W}}} = observed(Config),
              Ref = monitor(process, W),
              send(S, vector(V)),
              receive {'DOWN', Ref, process, W, Reason} -> Expected(Reason)
              after 3000 -> ct:fail({no_down, V}) end
      end,
      [{3, "19", fun({custom_failure, 2.5, "text", <<7>>}) -> ok end},
       {4, "20", fun({badarith, [{erl_eval, do_apply, 7, _}]}) -> ok end},
       {5, "21", fun(killed) -> ok end},
       {6, "22", fun(normal) -> ok end}]).

%% 27 (unallowed name), 28 ({Name,Node} bypass), 29 (rex bypass), 31 (fabric_rpc, a system
%% name even if allowed): all dropped, no reply, nobody receives anything.
unallowed_and_bypass_names(Config) ->
    S = ?config(sock, Config),
    [send(S, vector(V)) || V <- ["27", "28", "29", "31"]],
    recv_nothing(S, 300),
    nothing_observed(Config).

%% 32: a real fun in the payload (the original crashed): dropped, connection up.
fun_payload_dropped(Config) ->
    S = ?config(sock, Config),
    send(S, vector("32")),
    recv_nothing(S, 300).

%% 34 -> 35: a hand-made uncompressed frame is accepted.
hand_made_uncompressed(Config) ->
    exchange(Config, "34", "35"),
    {simple_server, {_, {hello, "hand", 1.5}}} = observed(Config).

%% 36 creates the proxy for id 5; 37 -> 38 uses it; 39 (DEAD noproc) ends it with normal.
r_frame_proxy(Config) ->
    S = ?config(sock, Config),
    send(S, vector("36")),
    recv_nothing(S, 200),
    %% 5 was used by dead_reasons and ended; 36 makes a fresh proxy for it
    exchange(Config, "37", "38"),
    {simple_server, {P5, via_r_frame_proxy}} = observed(Config),
    Ref = monitor(process, P5),
    send(S, vector("39")),
    receive {'DOWN', Ref, process, P5, R} when R =:= normal; R =:= noproc -> ok
    after 3000 -> ct:fail(no_down) end.

%% 33/44 {foo,bar}, 45 garbage, 46 unknown id, 47 untagged tuple, 48 map, 49 {f,0,{}},
%% 50 DEAD unknown id: each dropped (the original crashed), no reply, connection up.
crashing_frames_dropped(Config) ->
    S = ?config(sock, Config),
    [send(S, vector(V)) || V <- ["33", "44", "45", "46", "47", "48", "49", "50"]],
    recv_nothing(S, 300),
    nothing_observed(Config),
    exchange(Config, "14", "15"),
    {simple_server, {_, again}} = observed(Config).

%% 51: {pl,777} (never issued) becomes an exited pid; echoed back as a new {pr,N} followed
%% by DEAD {pr,N} noproc (52/53, with our id N).
pl_unknown_id_substituted(Config) ->
    S = ?config(sock, Config),
    send(S, vector("51")),
    {m, 1, {t, {pong, {pr, 1}, {pr, N}}}} = recv(S),
    {'DEAD', {pr, N}, noproc} = recv(S),
    {simple_server, {_, Dead}} = observed(Config),
    false = is_process_alive(Dead).

%% After all of the above the connection is still up and counted its errors.
connection_survived(Config) ->
    exchange(Config, "14", "15"),
    #{connections := 1, errors := Errors} = fabric_peer:info(?config(server, Config)),
    true = Errors >= 12,
    {simple_server, _} = observed(Config).

%%% handshake vectors on fresh connections

%% Our client in legacy mode sends exactly vector 01 as hello, and vector 03 as the response
%% to vector 02's challenge (secret "secret").
hello_is_vector_01(Config) ->
    {ok, L} = gen_tcp:listen(0, [binary, {packet, 4}, {active, false}]),
    {ok, Port} = inet:port(L),
    Self = self(),
    spawn_link(fun() ->
                       {ok, S} = gen_tcp:accept(L),
                       {ok, Hello} = gen_tcp:recv(S, 0),
                       ok = gen_tcp:send(S, vector("02")),
                       {ok, Resp} = gen_tcp:recv(S, 0),
                       ok = gen_tcp:send(S, vector("04")),
                       Self ! {frames, Hello, Resp},
                       timer:sleep(500)
               end),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                  #{mode => legacy, allow_legacy_auth => true, reconnect => false}),
    receive {frames, Hello, Resp} ->
            Hello = vector("01"),
            Resp = vector("03")
    after 3000 -> ct:fail(no_frames) end,
    fabric_peer:close(C),
    gen_tcp:close(L),
    Config.

%% 05 (response computed with the wrong secret): {auth, failed} (vector 06) and close.
wrong_secret_vector_05(Config) ->
    S = raw_connect(?config(port, Config)),
    send(S, vector("01")),
    {challenge, _} = recv(S),
    send(S, vector("05")),
    Failed = vector_term("06"),
    [Failed] = expect_closed(S).

%% 40 {hi,"x"} (unknown atom), 41 {ok,"x"}, 42 garbage: that connection closes, nothing else.
bad_hellos_40_42(Config) ->
    [begin S = raw_connect(?config(port, Config)), send(S, vector(V)), [] = expect_closed(S) end
     || V <- ["40", "41", "42"]],
    S2 = legacy_login(?config(port, Config), "secret"),
    gen_tcp:close(S2).

%% 43 {response,"short"}: {auth, failed} and close (the original crashed without answering).
short_response_43(Config) ->
    S = raw_connect(?config(port, Config)),
    send(S, vector("01")),
    {challenge, _} = recv(S),
    send(S, vector("43")),
    [{auth, failed}] = expect_closed(S).

%% With default options the original client's correct login is refused with {auth, failed}.
legacy_refused_by_default(Config) ->
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{}),
    S = raw_connect(fabric_peer:port(Srv)),
    send(S, vector("01")),
    {challenge, C} = recv(S),
    send(S, {response, fabric_peer_test_lib:md5hex(C ++ "secret")}),
    [{auth, failed}] = expect_closed(S),
    fabric_peer:stop_server(Srv),
    Config.

%%% S->C frames against our client

%% A fake original server plays 02/04, then 15 (pong to id 1), 23 (ships its pid 2),
%% 24 (DEAD 2 normal), 25 (DEAD 4 custom, unknown here: ignored), 33 (unknown frame:
%% dropped, the original client crashed) and 30 (a reply carrying a reference).
client_against_original_server(Config) ->
    {ok, L} = gen_tcp:listen(0, [binary, {packet, 4}, {active, false}]),
    {ok, Port} = inet:port(L),
    Self = self(),
    Srv = spawn_link(fun() ->
                             {ok, S} = gen_tcp:accept(L),
                             {ok, _} = gen_tcp:recv(S, 0),
                             ok = gen_tcp:send(S, vector("02")),
                             {ok, _} = gen_tcp:recv(S, 0),
                             ok = gen_tcp:send(S, vector("04")),
                             fake_server_loop(S, Self)
                     end),
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret",
                                  #{mode => legacy, allow_legacy_auth => true, reconnect => false}),
    ok = fabric_peer:send({C, simple_server}, {self(), again}),
    receive {server_got, {m, simple_server, {t, {{pr, 1}, again}}}} -> ok
    after 3000 -> ct:fail(no_frame) end,
    Srv ! {play, ["15"]},
    P1 = receive {pong, PA, again} -> PA after 3000 -> ct:fail(no_pong) end,
    true = fabric_peer:is_proxy(P1),
    Srv ! {play, ["23"]},
    P2 = receive {shipped, PB, '$return'} -> PB after 3000 -> ct:fail(no_ship) end,
    Ref = monitor(process, P2),
    Srv ! {play, ["24", "25", "33"]},
    receive {'DOWN', Ref, process, P2, normal} -> ok after 3000 -> ct:fail(no_down) end,
    Srv ! {play, ["30"]},
    receive {Ref30, "18443"} when is_reference(Ref30) -> ok after 3000 -> ct:fail(no_30) end,
    #{state := established, errors := 1, mode := legacy} = fabric_peer:info(C),
    fabric_peer:close(C),
    gen_tcp:close(L),
    Config.

fake_server_loop(S, Parent) ->
    ok = inet:setopts(S, [{active, once}]),
    receive
        {tcp, S, B} -> Parent ! {server_got, binary_to_term(B)}, fake_server_loop(S, Parent);
        {tcp_closed, S} -> ok;
        {play, Vs} -> [ok = gen_tcp:send(S, vector(V)) || V <- Vs], fake_server_loop(S, Parent)
    end.
