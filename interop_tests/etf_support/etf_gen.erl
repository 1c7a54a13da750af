%% Random term generator and echo loop for pyfabric's ETF interop tests.
%% Compiled at test time (erlc into a temp dir); never part of the product.
-module(etf_gen).
-export([gen/1, echo/0, encode_all/1, timing/1, sweep/1, exprs/1]).

-define(OPTION_SETS, [[], [{minor_version,0}], [{minor_version,1}], [{minor_version,2}],
                      [compressed], [{compressed,9},{minor_version,1}],
                      [{compressed,1},{minor_version,0}], [{minor_version,2},{compressed,6}]]).

%% gen([Seed, Count, OutFile]): write Count random terms, each encoded under every
%% option set, as <<Size:32, Bin/binary>> records (term-major order).
gen([SeedA, CountA, File]) ->
    rand:seed(exsss, {list_to_integer(SeedA), 17, 42}),
    Count = list_to_integer(CountA),
    Terms = fixed_terms() ++ [term(4) || _ <- lists:seq(1, Count)],
    Data = [[<<(byte_size(B)):32, B/binary>> || O <- ?OPTION_SETS, B <- [term_to_binary(T, O)]]
            || T <- Terms],
    ok = file:write_file(File, Data),
    io:format("~b~n", [length(Terms)]),
    halt(0).

%% sweep([OutFile]): binaries of K random bytes followed by M zeros, encoded with
%% [compressed]: zlib output sizes straddle the "use compression?" threshold.
sweep([File]) ->
    rand:seed(exsss, {1, 2, 3}),
    Data = [begin
                Rand = crypto_free_random(K),
                frame(term_to_binary(<<Rand/binary, 0:(M * 8)>>, [compressed]))
            end || K <- lists:seq(1, 80), M <- lists:seq(0, 40)],
    ok = file:write_file(File, Data),
    halt(0).

%% exprs([InFile, OutFile]): InFile holds one Erlang expression per line; each is
%% evaluated and encoded under every option set (term-major order).
exprs([In, Out]) ->
    {ok, Text} = file:read_file(In),
    Lines = [L || L <- string:split(unicode:characters_to_list(Text), "\n", all), L =/= ""],
    Data = [[frame(term_to_binary(eval(L), O)) || O <- ?OPTION_SETS] || L <- Lines],
    ok = file:write_file(Out, Data),
    halt(0).

eval(Line) ->
    {ok, Tokens, _} = erl_scan:string(Line ++ "."),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, V, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    V.

%% encode_all([InFile, OutFile]): InFile holds <<Size:32, Bin>> records of
%% term_to_binary(Term) produced elsewhere; each is decoded and re-encoded with
%% [{minor_version,2}] (or {error, Reason} on failure).
encode_all([In, Out]) ->
    {ok, Bin} = file:read_file(In),
    ok = file:write_file(Out, [frame(reencode(B)) || B <- records(Bin)]),
    halt(0).

%% echo(): read {packet,4} frames on stdin; reply with term_to_binary of
%% {ok, Term} (minor_version 2) or {error, Reason}.
echo() ->
    Port = open_port({fd, 0, 1}, [binary, {packet, 4}, eof]),
    echo_loop(Port).

echo_loop(Port) ->
    receive
        {Port, {data, B}} ->
            port_command(Port, reencode(B)),
            echo_loop(Port);
        {Port, eof} ->
            halt(0)
    end.

reencode(B) ->
    try binary_to_term(B) of
        T -> term_to_binary({ok, T}, [{minor_version, 2}])
    catch C:R -> term_to_binary({error, {C, R}})
    end.

%% timing([InFile, TargetMsA, OutFile]): benchmark helper. InFile holds records of
%% term_to_binary output; for each, binary_to_term and term_to_binary (compressed if
%% the input was, minor_version 1) are timed: the repetition count is doubled until a
%% run takes TargetMs, then 5 runs are made. Writes "EncUs DecUs" lines (medians,
%% microseconds per operation).
timing([In, TargetMsA, Out]) ->
    {ok, Bin} = file:read_file(In),
    Target = list_to_integer(TargetMsA) * 1000,
    Lines = [begin
                 T = binary_to_term(B),
                 Opts = case B of <<131, 80, _/binary>> -> [compressed, {minor_version,1}];
                                  _ -> [{minor_version,1}] end,
                 Enc = measure(fun(N) -> loop_enc(T, Opts, N) end, Target),
                 Dec = measure(fun(N) -> loop_dec(B, N) end, Target),
                 io_lib:format("~.4f ~.4f~n", [Enc, Dec])
             end || B <- records(Bin)],
    ok = file:write_file(Out, Lines),
    halt(0).

measure(F, Target) ->
    F(1),
    N = calibrate(F, 1, Target),
    median([element(1, timer:tc(fun() -> F(N) end)) / N || _ <- lists:seq(1, 5)]).

calibrate(F, N, Target) ->
    {Us, ok} = timer:tc(fun() -> F(N) end),
    if Us >= Target; N >= 1 bsl 24 -> N;
       true -> calibrate(F, N * 2, Target)
    end.

loop_enc(_, _, 0) -> ok;
loop_enc(T, O, N) -> _ = term_to_binary(T, O), loop_enc(T, O, N - 1).
loop_dec(_, 0) -> ok;
loop_dec(B, N) -> _ = binary_to_term(B), loop_dec(B, N - 1).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

records(<<Size:32, B:Size/binary, Rest/binary>>) -> [B | records(Rest)];
records(<<>>) -> [].

frame(B) -> <<(byte_size(B)):32, B/binary>>.

%% ---- terms -------------------------------------------------------------

fixed_terms() ->
    Node = 'other@host.example',
    Atom255 = list_to_atom(lists:duplicate(255, $z)),
    UAtom255 = list_to_atom(lists:duplicate(255, 16#10348)),
    X = 7, Y = {closure, "data"},
    [0, 255, 256, -1, 2147483647, 2147483648, -2147483648, -2147483649,
     1 bsl 64, -(1 bsl 64), 1 bsl 2039, 1 bsl 2040, -(1 bsl 3000),
     0.0, -0.0, 1.5, -1.5, 0.1, 5.0e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
     -1.7976931348623157e308, 1.0e-300, 123456789.123456789,
     '', a, 'hello world', 'h\x{e9}llo', 'caf\x{2603}', Atom255, UAtom255, true, false, undefined,
     {}, {a}, list_to_tuple(lists:seq(1, 255)), list_to_tuple(lists:seq(1, 256)),
     [], [[]], [1|2], [a, b | c], [1, 2 | <<3>>], "", "abc", lists:seq(0, 255), lists:seq(1, 300),
     lists:duplicate(65535, $x), lists:duplicate(65536, $y), [256, 1], "caf\x{e9}", [16#2603, $a],
     <<>>, <<1,2,3>>, <<1:1>>, <<1,2,3:7>>, <<255:4>>, crypto_free_random(1000),
     #{}, #{a => 1}, #{1 => a, b => [1,2], "s" => <<"b">>, {t} => #{}},
     maps:from_list([{I, I * I} || I <- lists:seq(1, 33)]),
     maps:from_list([{list_to_atom("k" ++ integer_to_list(I)), I} || I <- lists:seq(1, 200)]),
     #{[1,2] => list_key, #{a => 1} => map_key, [] => nil_key, {[x]} => tuple_list_key,
       "str" => string_key, [a | b] => improper_key},
     self(), list_to_pid("<0.1.2>"), make_ref(), hd(erlang:ports()),
     ext_pid(Node, 12345, 3, 9), ext_port(Node, 77, 4), ext_port(Node, 1 bsl 40, 4),
     ext_ref(Node, 5, [1, 2, 3]), ext_ref(Node, 5, [1, 2, 3, 4, 5]), ext_ref(Node, 5, [9]),
     fun lists:map/2, fun erlang:'++'/2, fun() -> ok end, fun(A) -> A + X end,
     fun(A, B) -> {A, B, X, Y} end, eval_fun(),
     {m, ping, {t, {{pr, 1}, {payload, "abababa"}}}},
     deep(60, leaf)].

crypto_free_random(N) -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).

node_bin(Node) -> <<131, Rest/binary>> = term_to_binary(Node), Rest.

ext_pid(Node, Id, Serial, Creation) ->
    binary_to_term(<<131, 88, (node_bin(Node))/binary, Id:32, Serial:32, Creation:32>>).
ext_port(Node, Id, Creation) when Id < 1 bsl 32 ->
    binary_to_term(<<131, 89, (node_bin(Node))/binary, Id:32, Creation:32>>);
ext_port(Node, Id, Creation) ->
    binary_to_term(<<131, 120, (node_bin(Node))/binary, Id:64, Creation:32>>).
ext_ref(Node, Creation, Ids) ->
    binary_to_term(<<131, 90, (length(Ids)):16, (node_bin(Node))/binary, Creation:32,
                     << <<I:32>> || I <- Ids >>/binary>>).

eval_fun() ->
    {ok, Tokens, _} = erl_scan:string("fun(Q) -> Q * 2 end."),
    {ok, [Expr]} = erl_parse:parse_exprs(Tokens),
    {value, F, _} = erl_eval:expr(Expr, erl_eval:new_bindings()),
    F.

deep(0, Leaf) -> Leaf;
deep(N, Leaf) -> {N, [deep(N - 1, Leaf)]}.

term(0) -> leaf();
term(D) ->
    case rand:uniform(10) of
        N when N =< 4 -> leaf();
        5 -> list_to_tuple([term(D - 1) || _ <- lists:seq(1, rand:uniform(6) - 1)]);
        6 -> [term(D - 1) || _ <- lists:seq(1, rand:uniform(6) - 1)];
        7 -> improper(D);
        8 -> map(D);
        9 -> fun_term(D);
        10 -> {term(D - 1), term(D - 1)}
    end.

improper(D) ->
    Tail = case rand:uniform(3) of 1 -> leaf_atom(); 2 -> rand_int(); 3 -> term(0) end,
    case Tail of
        L when is_list(L) -> [term(D - 1) | L];
        _ -> lists:foldl(fun(E, Acc) -> [E | Acc] end, Tail, [term(D - 1) || _ <- lists:seq(1, rand:uniform(4))])
    end.

map(D) ->
    Size = case rand:uniform(4) of 1 -> 33 + rand:uniform(60); _ -> rand:uniform(12) - 1 end,
    maps:from_list([{key(D), term(D - 1)} || _ <- lists:seq(1, Size)]).

%% Keys that cannot collide in Python (1 =:= 1.0 is false in Erlang, but 1 == 1.0
%% in Python; such a map is a documented DecodeError).
key(D) ->
    case term(max(D - 2, 0)) of
        F when is_float(F) -> F + 0.5 + trunc(F) * 0.0;
        K -> case has_float(K) of true -> key(D); false -> K end
    end.

has_float(F) when is_float(F) -> true;
has_float(T) when is_tuple(T) -> has_float(tuple_to_list(T));
has_float([H | T]) -> has_float(H) orelse has_float(T);
has_float(M) when is_map(M) -> has_float(maps:to_list(M));
has_float(_) -> false.

fun_term(D) ->
    V = term(D - 1),
    case rand:uniform(4) of
        1 -> fun() -> V end;
        2 -> fun(A) -> {A, V} end;
        3 -> fun lists:reverse/1;
        4 -> fun erlang:element/2
    end.

leaf() ->
    case rand:uniform(14) of
        1 -> rand_int();
        2 -> rand_big();
        3 -> rand_float();
        4 -> leaf_atom();
        5 -> rand_string();
        6 -> rand_binary();
        7 -> rand_bits();
        8 -> [];
        9 -> rand_unicode_list();
        10 -> lists:nth(rand:uniform(4), [self(), make_ref(), hd(erlang:ports()), list_to_pid("<0.7.0>")]);
        11 -> lists:nth(rand:uniform(3), [true, false, undefined]);
        12 -> rand:uniform(256) - 1;
        13 -> -rand:uniform(1 bsl 31);
        14 -> {}
    end.

rand_int() -> rand:uniform(1 bsl 33) - (1 bsl 32).
rand_big() ->
    Bytes = case rand:uniform(10) of 1 -> 250 + rand:uniform(100); _ -> 4 + rand:uniform(20) end,
    V = rand:uniform(1 bsl (8 * Bytes)),
    case rand:uniform(2) of 1 -> V; 2 -> -V end.
rand_float() ->
    case rand:uniform(3) of
        1 -> rand:uniform() * math:pow(10, rand:uniform(40) - 20);
        2 -> (rand:uniform() - 0.5) * 1.0e10;
        3 -> float_from_bits(rand:uniform(1 bsl 64) - 1)
    end.
float_from_bits(Bits) ->
    case <<Bits:64>> of
        <<F/float>> -> F;
        _ -> 2.5   % nan/inf bit patterns do not match
    end.
leaf_atom() ->
    Chars = case rand:uniform(4) of
                1 -> [rand:uniform(255) || _ <- lists:seq(1, rand:uniform(10))];
                2 -> [$a + rand:uniform(25) || _ <- lists:seq(1, rand:uniform(12))];
                3 -> [rand:uniform(16#2000) || _ <- lists:seq(1, rand:uniform(10))];
                4 -> [$a + rand:uniform(25) || _ <- lists:seq(1, 200 + rand:uniform(55))]
            end,
    list_to_atom(Chars).
rand_string() -> [rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(20))].
rand_unicode_list() -> [rand:uniform(16#10000) || _ <- lists:seq(1, rand:uniform(8))].
rand_binary() -> crypto_free_random(rand:uniform(40) - 1).
rand_bits() ->
    N = rand:uniform(60),
    <<V:N>> = <<(rand:uniform(1 bsl N) - 1):N>>,
    <<V:N>>.
