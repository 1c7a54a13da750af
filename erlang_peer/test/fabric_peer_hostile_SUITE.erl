%% Hostile input against our server (docs/protocol.md sections 1, 8 and 9): size limits,
%% garbage, the error frame and too_many_errors, the new-atom budget, name policy bypasses,
%% random frames. A well-behaved client keeps being served throughout.
-module(fabric_peer_hostile_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [send/2, recv/1, recv_nothing/2, expect_closed/1, ext_login/3,
                               ext_login/2, legacy_login/2]).

all() -> [oversize_before_auth, oversize_after_auth, error_frames_for_extended_peer,
          too_many_errors_closes, atom_budget, whereis_hostile_names, unagreed_feature_frames,
          fuzz_random_frames, good_client_unaffected].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, emergency),
    fabric_peer_test_lib:start_ping(hping),
    %% hostile clients fail authentication on purpose: no throttling here
    {ok, S} = fabric_peer:start_server(0, "secret", #{allowed => [hping], allow_legacy_auth => true,
                                                        max_frame => 65536, max_new_atoms => 5,
                                                        max_auth_failures => 0}),
    Port = fabric_peer:port(S),
    %% a well-behaved client that must keep working through every case
    {ok, C} = fabric_peer:connect("127.0.0.1", Port, "secret", #{}),
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
