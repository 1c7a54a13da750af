%% @doc fabric_peer_frame: `m' frames to an original peer are the bytes the original sends.
-module(fabric_peer_frame_tests).

-include_lib("eunit/include/eunit.hrl").

original(T) -> term_to_binary(T, [{minor_version, 1}, compressed]).

%% what an original (legacy) peer is sent
encode(T) -> fabric_peer_frame:encode_message(legacy, false, T).

%% The frames of a small-message stream skip zlib and are still the original's bytes.
typical_small_frames_test() ->
    [?assertEqual(original(T), encode(T))
     || T <- [{m, 5, {n, 1234}}, {m, 5, {n, 12}}, {m, 3, {{pl, 7}, 12}}, {m, 3, {{pl, 7}, 1234}},
              {m, bench_echo, {{pr, 1}, hello}}, {m, 1, <<>>}, {m, 1, []}]].

%% The terms zlib shrinks most for their size (runs of one byte, repeated atoms) are still
%% compressed exactly as the original does, at every size around the threshold.
compressible_small_terms_test() ->
    Terms = lists:append([[binary:copy(<<0>>, N), binary:copy(<<"ab">>, N), lists:duplicate(N, 7),
                           list_to_tuple(lists:duplicate(N, a)), {m, N, binary:copy(<<"xyz">>, N)},
                           {m, 1, lists:seq(1, N)}, {m, 1, [{pl, I} || I <- lists:seq(1, N)]}]
                          || N <- lists:seq(0, 40)]),
    [?assertEqual(original(T), encode(T)) || T <- Terms],
    %% (the threshold is exercised: some of them are compressed, some are not)
    Compressed = [T || T <- Terms, original(T) =/= term_to_binary(T, [{minor_version, 1}])],
    ?assert(length(Compressed) > 10),
    ?assert(length(Terms) - length(Compressed) > 10).

%% Random small terms, of low and high entropy: byte-identical to the original's encoding.
random_terms_test() ->
    rand:seed(exsss, {15, 15, 15}),
    [begin
         T = {m, rand:uniform(300), random_term(3)},
         ?assertEqual(original(T), encode(T))
     end || _ <- lists:seq(1, 20000)].

random_term(0) -> leaf();
random_term(D) ->
    case rand:uniform(5) of
        1 -> list_to_tuple([random_term(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        2 -> [random_term(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        _ -> leaf()
    end.

leaf() ->
    case rand:uniform(7) of
        1 -> rand:uniform(256) - 1;
        2 -> rand:uniform(1 bsl 40);
        3 -> lists:nth(rand:uniform(4), [ok, n, pl, pr]);
        4 -> {pl, rand:uniform(1000)};
        5 -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(12))]);
        6 -> binary:copy(<<(rand:uniform(3))>>, rand:uniform(20));
        7 -> [rand:uniform(3) || _ <- lists:seq(1, rand:uniform(15))]
    end.
