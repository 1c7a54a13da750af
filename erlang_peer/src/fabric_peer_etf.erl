%% @doc Safe decoding of untrusted External Term Format payloads (docs/protocol.md section 8).
%%
%% `binary_to_term(B, [safe])' refuses to create atoms, so a frame that names an atom this
%% node has never seen (an exit reason, a foreign node name inside a pid or reference, a
%% user atom) fails with `badarg'. This module then walks the encoded term with a small,
%% non-recursive scanner, lists the atom texts that do not exist yet, checks them against
%% the caller's budget of new atoms, creates them and decodes again. The scanner also
%% enforces the structural bounds (every declared count is checked against the bytes that
%% remain, decompression is capped by the declared size and by a limit) and refuses the
%% encodings that must never come from the network (funs, atom cache references, LOCAL_EXT).
%% After decoding, funs and ports are refused wherever they appear: the protocol carries
%% them only as opaque binaries.
-module(fabric_peer_etf).

-export([decode/2, missing_atoms/2, contains_unsafe/1, inflate_bounded/2]).

-export_type([decode_opts/0, decode_error/0]).

-type decode_opts() :: #{atoms_left := non_neg_integer(),
                         max_decompressed := pos_integer()}.
-type decode_error() :: {bad_term, term()} | {limit, term()}.

-define(VERSION, 131).
-define(COMPRESSED, 80).
%% An atom text is at most 255 characters (the VM's limit); in UTF-8 that is <= 1020 bytes.
-define(MAX_ATOM_BYTES, 1020).

%% @doc Decode one untrusted payload. Returns the term and how many atoms were created.
%% Errors: `{bad_term, Why}' (not ETF, truncated, trailing bytes, over a bound, a fun or a
%% port outside an opaque handle) or `{limit, Why}' (the new-atom budget is exhausted).
-spec decode(binary(), decode_opts()) ->
          {ok, term(), non_neg_integer()} | {error, decode_error()}.
decode(Bin, #{max_decompressed := MaxDec} = Opts) when is_binary(Bin) ->
    case check_header(Bin, MaxDec) of
        ok -> decode_checked(Bin, Opts);
        {error, _} = E -> E
    end.

decode_checked(Bin, #{atoms_left := Left} = Opts) ->
    case safe_b2t(Bin) of
        {ok, Term} -> check_unsafe(Term, 0);
        {error, trailing} -> {error, {bad_term, trailing_bytes}};
        {error, badarg} ->
            case missing_atoms(Bin, Opts) of
                {ok, []} -> {error, {bad_term, not_etf}};
                {ok, Missing} when length(Missing) > Left ->
                    {error, {limit, {new_atoms, length(Missing)}}};
                {ok, Missing} ->
                    case create_atoms(Missing) of
                        ok ->
                            case safe_b2t(Bin) of
                                {ok, Term} -> check_unsafe(Term, length(Missing));
                                {error, _} -> {error, {bad_term, not_etf}}
                            end;
                        error -> {error, {bad_term, bad_atom}}
                    end;
                {error, _} = E -> E
            end
    end.

safe_b2t(Bin) ->
    try binary_to_term(Bin, [safe, used]) of
        {Term, Used} when Used =:= byte_size(Bin) -> {ok, Term};
        {_, _} -> {error, trailing}
    catch error:badarg -> {error, badarg}
    end.

check_unsafe(Term, Created) ->
    case contains_unsafe(Term) of
        false -> {ok, Term, Created};
        {true, What} -> {error, {bad_term, What}}
    end.

create_atoms(Missing) ->
    try
        lists:foreach(fun({Enc, Text}) -> _ = binary_to_atom(Text, Enc) end, Missing),
        ok
    catch error:_ -> error
    end.

%% A compressed payload declares its uncompressed size: refuse it before inflating anything.
check_header(<<?VERSION, ?COMPRESSED, Size:32, _/binary>>, MaxDec) when Size > MaxDec ->
    {error, {bad_term, {decompressed_size, Size}}};
check_header(<<?VERSION, _, _/binary>>, _) -> ok;
check_header(_, _) -> {error, {bad_term, not_etf}}.

%% @doc True (with what was found) when a decoded term holds a fun or a port anywhere.
-spec contains_unsafe(term()) -> false | {true, 'fun' | port}.
contains_unsafe(T) ->
    try walk_unsafe([T]), false
    catch throw:{unsafe, What} -> {true, What}
    end.

walk_unsafe([]) -> ok;
walk_unsafe([H | Rest]) when is_tuple(H) -> walk_unsafe(tuple_to_list(H) ++ Rest);
walk_unsafe([H | Rest]) when is_list(H) -> walk_unsafe(list_items(H, Rest));
walk_unsafe([H | Rest]) when is_map(H) ->
    walk_unsafe(maps:fold(fun(K, V, Acc) -> [K, V | Acc] end, Rest, H));
walk_unsafe([H | _]) when is_function(H) -> throw({unsafe, 'fun'});
walk_unsafe([H | _]) when is_port(H) -> throw({unsafe, port});
walk_unsafe([_ | Rest]) -> walk_unsafe(Rest).

%% Elements and (improper) tail of a list, pushed in front of the work list.
list_items([], Rest) -> Rest;
list_items([H | T], Rest) -> [H | list_items(T, Rest)];
list_items(Tail, Rest) -> [Tail | Rest].

%% @doc The atom texts a payload names that do not exist on this node, each once, as
%% `{latin1 | utf8, Text}'. Validates the whole structure on the way.
-spec missing_atoms(binary(), #{max_decompressed := pos_integer(), _ => _}) ->
          {ok, [{latin1 | utf8, binary()}]} | {error, decode_error()}.
missing_atoms(<<?VERSION, ?COMPRESSED, Size:32, Z/binary>>, #{max_decompressed := MaxDec}) ->
    case Size =< MaxDec andalso inflate_bounded(Z, Size) of
        {ok, Plain} when byte_size(Plain) =:= Size -> scan_top(Plain);
        false -> {error, {bad_term, {decompressed_size, Size}}};
        _ -> {error, {bad_term, bad_compression}}
    end;
missing_atoms(<<?VERSION, Body/binary>>, _) -> scan_top(Body);
missing_atoms(_, _) -> {error, {bad_term, not_etf}}.

scan_top(Body) ->
    try scan(Body, 1, #{}) of
        {<<>>, Found} -> {ok, lists:sort(maps:keys(Found))};
        {_, _} -> {error, {bad_term, trailing_bytes}}
    catch throw:{bad, Why} -> {error, {bad_term, Why}}
    end.

%% @doc Inflate a zlib stream, producing at most `Max' bytes (a zip bomb stops there).
-spec inflate_bounded(binary(), non_neg_integer()) -> {ok, binary()} | {error, term()}.
inflate_bounded(Z, Max) ->
    S = zlib:open(),
    try
        ok = zlib:inflateInit(S),
        inflate_loop(S, zlib:safeInflate(S, Z), Max, [], 0)
    catch _:Why -> {error, Why}
    after zlib:close(S)
    end.

inflate_loop(S, {Cont, Out}, Max, Acc, N0) ->
    N = N0 + iolist_size(Out),
    if N > Max -> {error, too_large};
       Cont =:= finished -> {ok, iolist_to_binary(lists:reverse([Out | Acc]))};
       true -> inflate_loop(S, zlib:safeInflate(S, []), Max, [Out | Acc], N)
    end.

%% scan(Bytes, Pending, Found): consume Pending terms. Non-recursive: a container adds its
%% element count to Pending. Each pending term needs at least one byte, which bounds every
%% declared count by the input size before anything is allocated.
scan(Rest, 0, Found) -> {Rest, Found};
scan(Rest, N, _) when N > byte_size(Rest) -> throw({bad, truncated});
scan(<<97, _, R/binary>>, N, F) -> scan(R, N - 1, F);
scan(<<98, _:32, R/binary>>, N, F) -> scan(R, N - 1, F);
scan(<<99, _:31/binary, R/binary>>, N, F) -> scan(R, N - 1, F);
scan(<<70, _:64, R/binary>>, N, F) -> scan(R, N - 1, F);
scan(<<T, _/binary>> = B, N, F) when T =:= 100; T =:= 115; T =:= 118; T =:= 119 ->
    {R, F1} = atom(B, F),
    scan(R, N - 1, F1);
scan(<<101, B/binary>>, N, F) ->                        % REFERENCE_EXT
    {R0, F1} = atom(B, F), R = skip(R0, 5), scan(R, N - 1, F1);
scan(<<114, Len:16, B/binary>>, N, F) ->                % NEW_REFERENCE_EXT
    {R0, F1} = atom(B, F), R = skip(R0, 1 + 4 * Len), scan(R, N - 1, F1);
scan(<<90, Len:16, B/binary>>, N, F) ->                 % NEWER_REFERENCE_EXT
    {R0, F1} = atom(B, F), R = skip(R0, 4 + 4 * Len), scan(R, N - 1, F1);
scan(<<102, B/binary>>, N, F) ->                        % PORT_EXT
    {R0, F1} = atom(B, F), scan(skip(R0, 5), N - 1, F1);
scan(<<89, B/binary>>, N, F) ->                         % NEW_PORT_EXT
    {R0, F1} = atom(B, F), scan(skip(R0, 8), N - 1, F1);
scan(<<120, B/binary>>, N, F) ->                        % V4_PORT_EXT
    {R0, F1} = atom(B, F), scan(skip(R0, 12), N - 1, F1);
scan(<<103, B/binary>>, N, F) ->                        % PID_EXT
    {R0, F1} = atom(B, F), scan(skip(R0, 9), N - 1, F1);
scan(<<88, B/binary>>, N, F) ->                         % NEW_PID_EXT
    {R0, F1} = atom(B, F), scan(skip(R0, 12), N - 1, F1);
scan(<<104, A, R/binary>>, N, F) -> scan(R, N - 1 + A, F);
scan(<<105, A:32, R/binary>>, N, F) -> scan(R, N - 1 + A, F);
scan(<<116, A:32, R/binary>>, N, F) -> scan(R, N - 1 + 2 * A, F);
scan(<<106, R/binary>>, N, F) -> scan(R, N - 1, F);
scan(<<107, Len:16, R/binary>>, N, F) -> scan(skip(R, Len), N - 1, F);
scan(<<108, Len:32, R/binary>>, N, F) -> scan(R, N + Len, F);   % Len elements + tail - self
scan(<<109, Len:32, R/binary>>, N, F) -> scan(skip(R, Len), N - 1, F);
scan(<<77, Len:32, _Bits, R/binary>>, N, F) -> scan(skip(R, Len), N - 1, F);
scan(<<110, Len, _Sign, R/binary>>, N, F) -> scan(skip(R, Len), N - 1, F);
scan(<<111, Len:32, _Sign, R/binary>>, N, F) -> scan(skip(R, Len), N - 1, F);
scan(<<T, _/binary>>, _, _) when T =:= 112; T =:= 113; T =:= 117 -> throw({bad, 'fun'});
scan(<<T, _/binary>>, _, _) -> throw({bad, {tag, T}});
scan(<<>>, _, _) -> throw({bad, truncated}).

skip(B, Len) when byte_size(B) >= Len -> binary_part(B, Len, byte_size(B) - Len);
skip(_, _) -> throw({bad, truncated}).

atom(<<100, Len:16, Text:Len/binary, R/binary>>, F) -> {R, note(latin1, Text, F)};
atom(<<115, Len, Text:Len/binary, R/binary>>, F) -> {R, note(latin1, Text, F)};
atom(<<118, Len:16, Text:Len/binary, R/binary>>, F) -> {R, note(utf8, Text, F)};
atom(<<119, Len, Text:Len/binary, R/binary>>, F) -> {R, note(utf8, Text, F)};
atom(_, _) -> throw({bad, bad_atom}).

note(_, Text, _) when byte_size(Text) > ?MAX_ATOM_BYTES -> throw({bad, atom_too_long});
note(Enc, Text, F) ->
    case is_map_key({Enc, Text}, F) orelse exists(Text, Enc) of
        true -> F;
        false -> F#{{Enc, Text} => true}
    end.

exists(Text, Enc) ->
    try _ = binary_to_existing_atom(Text, Enc), true
    catch error:badarg -> false
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

opts(Left) -> #{atoms_left => Left, max_decompressed => 1 bsl 20}.

known_term_test() ->
    T = {hello, "localhost", [1.5, <<1, 2>>, -7, 1 bsl 80]},
    ?assertEqual({ok, T, 0}, decode(term_to_binary(T), opts(0))).

compressed_term_test() ->
    T = {m, 1, <<0:8000>>},
    B = term_to_binary(T, [compressed]),
    ?assertMatch(<<131, 80, _/binary>>, B),
    ?assertEqual({ok, T, 0}, decode(B, opts(0))).

%% An unknown atom is created within the budget, refused beyond it.
new_atom_budget_test() ->
    Name = <<"fabric_peer_etf_test_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Enc = <<131, 104, 2, 100, 0, 2, "ok", 119, (byte_size(Name)), Name/binary>>,
    ?assertEqual({error, {limit, {new_atoms, 1}}}, decode(Enc, opts(0))),
    ?assertMatch({ok, {ok, _}, 1}, decode(Enc, opts(1))),
    %% now it exists: no budget needed
    ?assertMatch({ok, {ok, _}, 0}, decode(Enc, opts(0))).

foreign_node_in_pid_test() ->
    Node = <<"fabric_etf_test_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@host">>,
    Pid = <<131, 88, 119, (byte_size(Node)), Node/binary, 0:32, 0:32, 1:32>>,
    ?assertMatch({error, {limit, _}}, decode(Pid, opts(0))),
    ?assertMatch({ok, P, 1} when is_pid(P), decode(Pid, opts(5))).

garbage_test_() ->
    [?_assertEqual({error, {bad_term, not_etf}}, decode(<<1, 2, 3, 4>>, opts(10))),
     ?_assertEqual({error, {bad_term, not_etf}}, decode(<<>>, opts(10))),
     ?_assertEqual({error, {bad_term, not_etf}}, decode(<<"not an erlang term">>, opts(10))),
     ?_assertMatch({error, {bad_term, _}}, decode(<<131, 104, 2, 97, 1>>, opts(10))),
     ?_assertMatch({error, {bad_term, _}}, decode(<<131, 108, 255, 255, 255, 255>>, opts(10))),
     ?_assertMatch({error, {bad_term, _}}, decode(<<131, 97, 1, 0>>, opts(10)))].

decompression_bound_test() ->
    B = term_to_binary(<<0:(2 bsl 23)>>, [compressed]),
    ?assertMatch({error, {bad_term, {decompressed_size, _}}},
                 decode(B, #{atoms_left => 0, max_decompressed => 1000})).

funs_and_ports_refused_test() ->
    ?assertEqual({error, {bad_term, 'fun'}}, decode(term_to_binary({x, fun lists:sort/1}), opts(0))),
    [Port | _] = erlang:ports(),
    ?assertEqual({error, {bad_term, port}}, decode(term_to_binary([a, #{k => Port}]), opts(0))).

scanner_rejects_fun_test() ->
    B = <<131, 104, 2, 119, 3, "zzq", 113, 119, 1, "m", 119, 1, "f", 97, 1>>,
    ?assertMatch({error, {bad_term, 'fun'}}, missing_atoms(B, opts(10))).
-endif.
