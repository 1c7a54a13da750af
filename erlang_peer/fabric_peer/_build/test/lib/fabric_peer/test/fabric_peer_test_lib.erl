%% Helpers shared by the Common Test suites: raw fabric clients over gen_tcp (legacy and
%% extended handshakes done by hand), test processes, waiting utilities.
-module(fabric_peer_test_lib).
-compile([export_all, nowarn_export_all]).

-define(T, 3000).

start_app() ->
    {ok, _} = application:ensure_all_started(fabric_peer),
    ok.

%%% the suites' init/end functions

%% `init_per_suite' of the suites: the application started, logs above `error' only.
init_suite(Config) ->
    ok = start_app(),
    logger:set_primary_config(level, error),
    Config.

%% A server on a port chosen by the OS for a suite or a case: `{server, S}' and `{port, P}'
%% in `Config', stopped by `stop_server/1'.
start_server(Secret, Opts, Config) ->
    {ok, S} = fabric_peer:start_server(0, Secret, Opts),
    [{server, S}, {port, fabric_peer:port(S)} | Config].

stop_server(Config) ->
    fabric_peer:stop_server(proplists:get_value(server, Config)),
    Config.

%% The in-repository conformance corpus (conformance/ at the repository root), found by
%% walking up from this module's beam file (it is under erlang_peer/_build/).
conformance_dir() -> find_up(filename:absname(filename:dirname(code:which(?MODULE))), 16).

%% The recorded frames of the original implementation.
vector_dir() -> filename:join(conformance_dir(), "legacy").

find_up(Dir, 0) -> error({no_conformance_dir_above, Dir});
find_up(Dir, N) ->
    Cand = filename:join(Dir, "conformance"),
    case filelib:is_regular(filename:join([Cand, "legacy", "INDEX.md"])) of
        true -> Cand;
        false -> find_up(filename:dirname(Dir), N - 1)
    end.

vector(Prefix) ->
    [File] = filelib:wildcard(filename:join(vector_dir(), Prefix ++ "_*.bin")),
    {ok, Bin} = file:read_file(File),
    Bin.

vector_term(Prefix) -> binary_to_term(vector(Prefix)).

%%% raw sockets

raw_connect(Port) ->
    {ok, S} = gen_tcp:connect("127.0.0.1", Port, [binary, {packet, 4}, {active, false}], ?T),
    S.

send(S, Bin) when is_binary(Bin) -> ok = gen_tcp:send(S, Bin);
send(S, Term) -> ok = gen_tcp:send(S, term_to_binary(Term)).

recv(S) -> recv(S, ?T).
recv(S, Timeout) ->
    case gen_tcp:recv(S, 0, Timeout) of
        {ok, B} -> binary_to_term(B);
        {error, _} = E -> E
    end.

recv_bin(S) ->
    {ok, B} = gen_tcp:recv(S, 0, ?T),
    B.

%% Nothing arrives within Timeout (the connection may stay open).
recv_nothing(S, Timeout) ->
    {error, timeout} = gen_tcp:recv(S, 0, Timeout),
    ok.

%% The peer closed (possibly after some frames, returned).
expect_closed(S) -> expect_closed(S, []).
expect_closed(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, B} -> expect_closed(S, [binary_to_term(B) | Acc]);
        {error, closed} -> lists:reverse(Acc);
        {error, econnreset} -> lists:reverse(Acc)
    end.

%% The original client's handshake: vector 01 hello, md5 response.
legacy_login(Port, Secret) ->
    S = raw_connect(Port),
    send(S, vector("01")),
    {challenge, C} = recv(S),
    32 = length(C),
    send(S, {response, md5hex(C ++ Secret)}),
    {auth, success} = recv(S),
    S.

md5hex(Text) ->
    binary_to_list(fabric_peer_handshake:hex(crypto:hash(md5, Text))).

%% Our extended handshake by hand (raw frames), returning the socket and the offer.
ext_login(Port, Secret) -> ext_login(Port, Secret, #{}).
ext_login(Port, Secret, AcceptOver) ->
    S = raw_connect(Port),
    F1 = term_to_binary(fabric_peer_handshake:extended_hello(crypto:strong_rand_bytes(32))),
    send(S, F1),
    F2 = recv_bin(S),
    {challenge, _Nonce, Offer} = binary_to_term(F2),
    %% a raw client is a version 1 peer that does not know `acks' nor `credit'
    %% (docs/protocol.md 11, 12), unless the test accepts them itself
    Accept = maps:merge(#{<<"features">> => maps:get(<<"features">>, Offer) -- [<<"acks">>, <<"credit">>],
                          <<"node">> => <<"raw@test">>, <<"max_frame">> => 1 bsl 20,
                          <<"heartbeat">> => 0}, AcceptOver),
    AcceptBin = term_to_binary(Accept),
    Sec = iolist_to_binary(Secret),
    Mac = fabric_peer_handshake:client_mac(Sec, F1, F2, AcceptBin),
    F3 = term_to_binary({response, Mac, AcceptBin}),
    send(S, F3),
    {auth, success, SMac, InfoBin} = recv(S),
    SMac = fabric_peer_handshake:server_mac(Sec, F1, F2, F3, InfoBin),
    {S, Offer, binary_to_term(InfoBin)}.

%%% processes

%% The seed's ping process.
ping_loop() ->
    receive {From, M} -> From ! {self(), {pong, M}}, ping_loop() end.

start_ping(Name) ->
    Pid = spawn(fun ping_loop/0),
    true = register(Name, Pid),
    Pid.

%% simple_server of the vectors: replies {pong, self(), Msg} and reports to Observer.
simple_server(Observer) ->
    receive
        {From, Msg} = M when is_pid(From) ->
            Observer ! {simple_server, M},
            From ! {pong, self(), Msg},
            simple_server(Observer);
        Other ->
            Observer ! {simple_server, Other},
            simple_server(Observer)
    end.

%% Forwards everything it receives to Observer, tagged with Tag.
collector(Observer, Tag) ->
    receive M -> Observer ! {Tag, M}, collector(Observer, Tag) end.

%% A process that traps exits, reports every message, and exits on {exit, R}.
trapper(Observer, Tag) ->
    process_flag(trap_exit, true),
    trapper_loop(Observer, Tag).
trapper_loop(Observer, Tag) ->
    receive
        {exit, R} -> exit(R);
        {link_to, P} -> link(P), Observer ! {Tag, linked}, trapper_loop(Observer, Tag);
        M -> Observer ! {Tag, M}, trapper_loop(Observer, Tag)
    end.

%% A plain process (not trapping) that exits on {exit, R} or links on {link_to, P}.
victim(Observer, Tag) ->
    receive
        {exit, R} -> exit(R);
        {link_to, P} -> link(P), Observer ! {Tag, linked}, victim(Observer, Tag);
        {unlink_from, P} -> unlink(P), Observer ! {Tag, unlinked}, victim(Observer, Tag);
        crash -> _ = 1 / zero(), ok;
        M -> Observer ! {Tag, M}, victim(Observer, Tag)
    end.

zero() -> 0.

unique_name(Prefix) ->
    list_to_atom(Prefix ++ "_" ++ integer_to_list(erlang:unique_integer([positive]))).

%% A fresh client node name (`route', docs/protocol.md 16.1).
node_name(Prefix) ->
    list_to_atom(Prefix ++ integer_to_list(erlang:unique_integer([positive])) ++ "@127.0.0.1").

%% An echo service under a fresh name: `{From, X}' -> `From ! {echo, self(), X}', and it
%% reports to the test process what it received (`{got, Name, From, X}'); `stop' ends it.
echo(Prefix) ->
    Test = self(),
    Name = unique_name(Prefix),
    Pid = spawn(fun() -> echo_loop(Test, Name) end),
    true = register(Name, Pid),
    {Name, Pid}.

echo_loop(Test, Name) ->
    receive
        {From, X} when is_pid(From) ->
            Test ! {got, Name, From, X},
            From ! {echo, self(), X},
            echo_loop(Test, Name);
        stop -> ok
    end.

close(Cs) -> [fabric_peer:close(C) || C <- Cs], ok.

%% Register a fresh process under a fresh name and allow it on the server.
remote(Server, Prefix, Fun) ->
    Name = unique_name(Prefix),
    Pid = spawn(Fun),
    true = register(Name, Pid),
    ok = fabric_peer:allow(Server, [Name]),
    {Name, Pid}.



wait_until(F) -> wait_until(F, 100).
wait_until(F, 0) -> F();
wait_until(F, N) ->
    case catch F() of
        true -> true;
        _ -> timer:sleep(30), wait_until(F, N - 1)
    end.

flush() -> receive _ -> flush() after 0 -> ok end.
