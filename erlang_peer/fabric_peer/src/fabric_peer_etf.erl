%% @doc Safe decoding of untrusted External Term Format payloads (docs/protocol.md section 8).
%%
%% Every payload is first walked by a small, non-recursive scanner over its bytes (inflated
%% once, within bounds, when it is compressed). The scanner checks the structure (every
%% declared count against the bytes that remain, no trailing bytes), counts the terms the
%% payload decodes to and refuses it beyond the term bounds below, refuses the encodings
%% that must never come from the network (funs, atom cache references, LOCAL_EXT, ports
%% other than a payload that is one port: the opaque handle `{po, Bin}')
%% and lists the atom texts that do not exist on this node. Those are checked against the
%% caller's budget of new atoms and created; then `binary_to_term(B, [safe])' decodes the
%% payload once. Nothing is walked or copied after decoding: the cost of a frame is
%% proportional to its bytes and to the bounded number of terms it holds.
%%
%% The bounds, each with its reason:
%% - `max_decompressed' (the caller's, the frame limit): the uncompressed size a compressed
%%   payload declares is refused above it before anything is inflated, and inflating stops
%%   there (a zip bomb costs at most that much memory).
%% - `max_terms' (default `fabric_peer_frame:default(max_terms)'): terms in one payload.
%%   Decoded terms cost memory per term (a list cell is 16 bytes where it took one byte on
%%   the wire), and the decoded term exists a few times over (the decoded frame, its
%%   rewritten payload, the copy in the receiver's heap): this caps that memory.
%% - ?TERMS_PER_COMPRESSED_BYTE: a compressed payload may hold at most this many terms per
%%   byte of its compressed form (and at least ?MIN_COMPRESSED_TERMS): zlib expands up to
%%   ~1000 times, so without it a 16 KB frame of 16 million `[]' would cost gigabytes. Bytes
%%   (a large binary of zeros) are not limited by it: a binary is one term.
%% - An uncompressed payload needs at least one byte per term (a STRING_EXT byte is a term:
%%   it decodes to a list cell), so its terms are bounded by its size.
%% - `unknown_nodes => refuse': the node name of a pid, reference or port that does not
%%   exist here is not created; the payload is refused (`bad_payload'). A frame never
%%   carries a raw pid, reference or port (section 4.1: they travel as `{pr, Id}', `{r, Bin}'
%%   and `{po, Bin}'), so such a frame would be refused anyway; without this, each one could
%%   create a node atom, one per made-up node (issue 11). The default, `create', treats
%%   them as any other new atom (the opaque handles decode their `Bin' with it).
%% - `dest_node => binary': in an `{m, {Name, Node}, Payload}' or `{mc, Ref, {Name, Node},
%%   Payload}' frame whose `Node' is no atom here, `Node' decodes as its name (a UTF-8
%%   binary) instead of a new atom: at a routing server it names a client node (section 16),
%%   of which there can be any number over the server's life, and elsewhere it is refused
%%   or dropped by name anyway (sections 4.1, 16.3).
-module(fabric_peer_etf).

-export([decode/2]).

-export_type([decode_opts/0, decode_error/0]).

-type decode_opts() :: #{atoms_left := non_neg_integer(),
                         max_decompressed := pos_integer(),
                         max_terms => pos_integer(),
                         unknown_nodes => create | refuse,
                         dest_node => atom | binary}.
-type decode_error() :: {bad_term, term()} | {limit, term()} | {bad_payload, term()}.

-define(VERSION, 131).
-define(COMPRESSED, 80).
%% An atom text is at most 255 characters (the VM's limit); in UTF-8 that is <= 1020 bytes.
-define(MAX_ATOM_BYTES, 1020).
-define(TERMS_PER_COMPRESSED_BYTE, 64).
-define(MIN_COMPRESSED_TERMS, 65536).

%% @doc Decode one untrusted payload. Returns the term and how many atoms were created.
%% Errors: `{bad_term, Why}' (not ETF, truncated, trailing bytes, over a bound, a fun or a
%% port), `{limit, Why}' (the new-atom budget is exhausted) or, with `unknown_nodes =>
%% refuse', `{bad_payload, {unknown_node, Kind}}'.
-spec decode(binary(), decode_opts()) ->
          {ok, term(), non_neg_integer()} | {error, decode_error()}.
decode(Bin, #{atoms_left := Left} = Opts) when is_binary(Bin) ->
    case plain(Bin, Opts) of
        {ok, Plain0, MaxTerms} ->
            Plain = case Opts of
                        #{dest_node := binary} -> dest_node(Plain0);
                        _ -> Plain0
                    end,
            case unknown_nodes(scan_top(Plain, MaxTerms), maps:get(unknown_nodes, Opts, create)) of
                {ok, Missing} when length(Missing) > Left ->
                    {error, {limit, {new_atoms, length(Missing)}}};
                {ok, Missing} ->
                    case create_atoms(Missing) of
                        ok -> b2t(Plain, length(Missing));
                        error -> {error, {bad_term, bad_atom}}
                    end;
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end.

%% The frame with the `Node' of its `{Name, Node}' destination as a binary when that atom
%% does not exist (`dest_node'); any other frame as it is.
dest_node(<<?VERSION, 104, 3, B/binary>> = Plain) ->
    case skip_atom(<<"m">>, B) of
        {ok, R} -> dest_pair(Plain, byte_size(Plain) - byte_size(R));
        error -> Plain
    end;
dest_node(<<?VERSION, 104, 4, B/binary>> = Plain) ->
    case skip_atom(<<"mc">>, B) of
        {ok, <<97, _, R/binary>>} -> dest_pair(Plain, byte_size(Plain) - byte_size(R));
        {ok, <<98, _:32, R/binary>>} -> dest_pair(Plain, byte_size(Plain) - byte_size(R));
        _ -> Plain
    end;
dest_node(Plain) -> Plain.

%% At offset `At': `{Name, Node}', two atoms.
dest_pair(Plain, At) ->
    case Plain of
        <<Head:At/binary, 104, 2, R/binary>> ->
            case atom_text(R) of
                {ok, _, _, R1} ->
                    case atom_text(R1) of
                        {ok, Enc, Text, R2} ->
                            case exists(Text, Enc) of
                                true -> Plain;
                                false ->
                                    Name = binary_part(R, 0, byte_size(R) - byte_size(R1)),
                                    NodeBin = unicode:characters_to_binary(Text, Enc),
                                    <<Head/binary, 104, 2, Name/binary, 109,
                                      (byte_size(NodeBin)):32, NodeBin/binary, R2/binary>>
                            end;
                        error -> Plain
                    end;
                error -> Plain
            end;
        _ -> Plain
    end.

skip_atom(Text, B) ->
    case atom_text(B) of
        {ok, _, Text, R} -> {ok, R};
        _ -> error
    end.

atom_text(<<100, Len:16, Text:Len/binary, R/binary>>) -> {ok, latin1, Text, R};
atom_text(<<115, Len, Text:Len/binary, R/binary>>) -> {ok, latin1, Text, R};
atom_text(<<118, Len:16, Text:Len/binary, R/binary>>) -> {ok, utf8, Text, R};
atom_text(<<119, Len, Text:Len/binary, R/binary>>) -> {ok, utf8, Text, R};
atom_text(_) -> error.

%% Node names not known here: refused, or new atoms like the others.
unknown_nodes({ok, []}, _) -> {ok, []};
unknown_nodes({ok, Found}, How) ->
    case [K || {node, K, _, _} <- Found] of
        [Kind | _] when How =:= refuse -> {error, {bad_payload, {unknown_node, Kind}}};
        _ -> {ok, lists:usort([case A of {node, _, Enc, Text} -> {Enc, Text}; _ -> A end
                               || A <- Found])}
    end;
unknown_nodes(E, _) -> E.

b2t(Plain, Created) ->
    try binary_to_term(Plain, [safe]) of
        Term -> {ok, Term, Created}
    catch error:badarg -> {error, {bad_term, not_etf}}
    end.

%% The payload with its version byte and without compression, and its term bound.
plain(<<?VERSION, ?COMPRESSED, Size:32, Z/binary>>, #{max_decompressed := MaxDec} = Opts) ->
    case Size =< MaxDec andalso inflate_bounded(Z, Size) of
        false -> {error, {bad_term, {decompressed_size, Size}}};
        {ok, Plain} when byte_size(Plain) =:= Size ->
            Ratio = max(?MIN_COMPRESSED_TERMS, ?TERMS_PER_COMPRESSED_BYTE * byte_size(Z)),
            {ok, <<?VERSION, Plain/binary>>, min(max_terms(Opts), Ratio)};
        _ -> {error, {bad_term, bad_compression}}
    end;
plain(<<?VERSION, _/binary>> = Bin, Opts) -> {ok, Bin, max_terms(Opts)};
plain(_, _) -> {error, {bad_term, not_etf}}.

max_terms(#{max_terms := N}) -> N;
max_terms(_) -> fabric_peer_frame:default(max_terms).

create_atoms([]) -> ok;
create_atoms(Missing) ->
    try
        lists:foreach(fun({Enc, Text}) -> _ = binary_to_atom(Text, Enc) end, Missing),
        ok
    catch error:_ -> error
    end.

scan_top(<<?VERSION, Body/binary>>, MaxTerms) ->
    try scan_port_or_term(Body, MaxTerms) of
        {<<>>, Found} -> {ok, maps:keys(Found)};
        {_, _} -> {error, {bad_term, trailing_bytes}}
    catch throw:{bad, Why} -> {error, {bad_term, Why}}
    end.

%% A port is refused inside a term, but a payload that is a port and nothing else is the
%% opaque handle `{po, Bin}' carries (docs/protocol.md 4.1): its node name is an atom like
%% any other, within the caller's budget.
scan_port_or_term(<<T, B/binary>>, _) when T =:= 102; T =:= 89; T =:= 120 ->
    {R, F} = node_atom(port, B, #{}),
    {skip(R, case T of 102 -> 5; 89 -> 8; 120 -> 12 end), F};
scan_port_or_term(Body, MaxTerms) -> scan(Body, 1, MaxTerms - 1, #{}).

%% Inflate a zlib stream, producing at most `Max' bytes (a zip bomb stops there).
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

%% scan(Bytes, Pending, TermsLeft, Found): consume Pending terms. Non-recursive: a container
%% adds its element count to Pending and takes it from TermsLeft (the term bound, checked
%% as soon as a count is declared, before anything is allocated). Each pending term needs
%% at least one byte, which bounds every declared count by the input size too.
scan(_, _, Left, _) when Left < 0 -> throw({bad, too_many_terms});
scan(Rest, 0, _, Found) -> {Rest, Found};
scan(Rest, N, _, _) when N > byte_size(Rest) -> throw({bad, truncated});
scan(<<97, _, R/binary>>, N, L, F) -> scan(R, N - 1, L, F);
scan(<<98, _:32, R/binary>>, N, L, F) -> scan(R, N - 1, L, F);
scan(<<99, _:31/binary, R/binary>>, N, L, F) -> scan(R, N - 1, L, F);
scan(<<70, _:64, R/binary>>, N, L, F) -> scan(R, N - 1, L, F);
scan(<<T, _/binary>> = B, N, L, F) when T =:= 100; T =:= 115; T =:= 118; T =:= 119 ->
    {R, F1} = atom(B, F),
    scan(R, N - 1, L, F1);
scan(<<101, B/binary>>, N, L, F) ->                        % REFERENCE_EXT
    {R0, F1} = node_atom(reference, B, F), R = skip(R0, 5), scan(R, N - 1, L, F1);
scan(<<114, Len:16, B/binary>>, N, L, F) ->                % NEW_REFERENCE_EXT
    {R0, F1} = node_atom(reference, B, F), R = skip(R0, 1 + 4 * Len), scan(R, N - 1, L, F1);
scan(<<90, Len:16, B/binary>>, N, L, F) ->                 % NEWER_REFERENCE_EXT
    {R0, F1} = node_atom(reference, B, F), R = skip(R0, 4 + 4 * Len), scan(R, N - 1, L, F1);
scan(<<T, _/binary>>, _, _, _) when T =:= 102; T =:= 89; T =:= 120 ->  % ports
    throw({bad, port});
scan(<<103, B/binary>>, N, L, F) ->                        % PID_EXT
    {R0, F1} = node_atom(pid, B, F), scan(skip(R0, 9), N - 1, L, F1);
scan(<<88, B/binary>>, N, L, F) ->                         % NEW_PID_EXT
    {R0, F1} = node_atom(pid, B, F), scan(skip(R0, 12), N - 1, L, F1);
scan(<<104, A, R/binary>>, N, L, F) -> scan(R, N - 1 + A, L - A, F);
scan(<<105, A:32, R/binary>>, N, L, F) -> scan(R, N - 1 + A, L - A, F);
scan(<<116, A:32, R/binary>>, N, L, F) -> scan(R, N - 1 + 2 * A, L - 2 * A, F);
scan(<<106, R/binary>>, N, L, F) -> scan(R, N - 1, L, F);
%% STRING_EXT: one list cell per byte
scan(<<107, Len:16, R/binary>>, N, L, F) -> scan(skip(R, Len), N - 1, L - Len, F);
scan(<<108, Len:32, R/binary>>, N, L, F) -> scan(R, N + Len, L - Len - 1, F); % + tail - self
scan(<<109, Len:32, R/binary>>, N, L, F) -> scan(skip(R, Len), N - 1, L, F);
scan(<<77, Len:32, _Bits, R/binary>>, N, L, F) -> scan(skip(R, Len), N - 1, L, F);
scan(<<110, Len, _Sign, R/binary>>, N, L, F) -> scan(skip(R, Len), N - 1, L, F);
scan(<<111, Len:32, _Sign, R/binary>>, N, L, F) -> scan(skip(R, Len), N - 1, L, F);
scan(<<T, _/binary>>, _, _, _) when T =:= 112; T =:= 113; T =:= 117 -> throw({bad, 'fun'});
scan(<<T, _/binary>>, _, _, _) -> throw({bad, {tag, T}});
scan(<<>>, _, _, _) -> throw({bad, truncated}).

skip(B, Len) when byte_size(B) >= Len -> binary_part(B, Len, byte_size(B) - Len);
skip(_, _) -> throw({bad, truncated}).

atom(<<100, Len:16, Text:Len/binary, R/binary>>, F) -> {R, note(latin1, Text, F)};
atom(<<115, Len, Text:Len/binary, R/binary>>, F) -> {R, note(latin1, Text, F)};
atom(<<118, Len:16, Text:Len/binary, R/binary>>, F) -> {R, note(utf8, Text, F)};
atom(<<119, Len, Text:Len/binary, R/binary>>, F) -> {R, note(utf8, Text, F)};
atom(_, _) -> throw({bad, bad_atom}).

%% The node name of a pid, reference or port of kind `Kind' (noted apart when unknown).
node_atom(Kind, B, F) ->
    {R, F1} = atom(B, #{}),
    case maps:keys(F1) of
        [] -> {R, F};
        [{Enc, Text}] -> {R, F#{{node, Kind, Enc, Text} => true}}
    end.

note(_, Text, _) when byte_size(Text) > ?MAX_ATOM_BYTES -> throw({bad, atom_too_long});
note(Enc, Text, F) ->
    case common(Text) =/= [] orelse is_map_key({Enc, Text}, F) orelse exists(Text, Enc) of
        true -> F;
        false -> F#{{Enc, Text} => true}
    end.

%% The atoms of every frame and payload (named here, so they exist): no lookup for them
%% (ASCII: the same text in either encoding; issue 15).
common(<<"m">>) -> m;
common(<<"t">>) -> t;
common(<<"pr">>) -> pr;
common(<<"pl">>) -> pl;
common(<<"r">>) -> r;
common(<<"mc">>) -> mc;
common(<<"ack">>) -> ack;
common(<<"credit">>) -> credit;
common(<<"true">>) -> true;
common(<<"false">>) -> false;
common(<<"ok">>) -> ok;
common(<<"undefined">>) -> undefined;
common(_) -> [].

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
    %% refused without creating the node's atom, whatever the budget
    InList = <<131, 108, 1:32, (binary:part(Pid, 1, byte_size(Pid) - 1))/binary, 106>>,
    ?assertEqual({error, {bad_payload, {unknown_node, pid}}},
                 decode(InList, (opts(5))#{unknown_nodes => refuse})),
    {'EXIT', _} = (catch binary_to_existing_atom(Node)),
    ?assertMatch({ok, P, 1} when is_pid(P), decode(Pid, opts(5))),
    %% a known node's pid is no unknown node
    ?assertMatch({ok, [P2]} when is_pid(P2),
                 case decode(InList, (opts(0))#{unknown_nodes => refuse}) of
                     {ok, T, 0} -> {ok, T};
                     E -> E
                 end).

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
    ?assertEqual({error, {bad_term, port}}, decode(term_to_binary([a, #{k => Port}]), opts(0))),
    %% a port alone is the payload of an opaque handle {po, Bin}
    ?assertEqual({ok, Port, 0}, decode(term_to_binary(Port), opts(0))).

%% Terms are bounded by the frame: a compressed list of many [] is refused from the
%% declared length, before it is decoded (the amplification of issue 11).
term_bounds_test_() ->
    Nils = fun(N) -> <<131, 108, N:32, (binary:copy(<<106>>, N))/binary, 106>> end,
    Big = Nils(1 bsl 20),
    Z = term_to_binary(binary_to_term(Big), [compressed]),
    O = opts(0),
    [?_assertMatch({ok, _, 0}, decode(Nils(1000), O)),
     ?_assertEqual({error, {bad_term, too_many_terms}},
                   decode(Nils(1000), O#{max_terms => 1001})),
     ?_assertMatch({ok, _, 0}, decode(Nils(1000), O#{max_terms => 1002})),
     ?_assert(byte_size(Z) < 4096),
     ?_assertEqual({error, {bad_term, too_many_terms}},
                   decode(Z, O#{max_decompressed => 2 bsl 20})),
     %% a string's bytes are list cells
     ?_assertEqual({error, {bad_term, too_many_terms}},
                   decode(term_to_binary(lists:duplicate(500, $a)), O#{max_terms => 100})),
     %% a large compressible binary is one term: accepted
     ?_assertMatch({ok, <<0:8000000>>, 0},
                   decode(term_to_binary(<<0:8000000>>, [compressed]), O#{max_decompressed => 2 bsl 20}))].

%% The node of a {Name, Node} destination that is no atom here stays a binary.
dest_node_test() ->
    Node = <<"fabric_etf_dest_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@h">>,
    M = <<131, 104, 3, 119, 1, "m", 104, 2, 119, 3, "svc", 119, (byte_size(Node)), Node/binary, 97, 7>>,
    O = (opts(0))#{dest_node => binary},
    ?assertEqual({ok, {m, {svc, Node}, 7}, 0}, decode(M, O)),
    Mc = <<131, 104, 4, 119, 2, "mc", 97, 5, 104, 2, 100, 0, 3, "svc", 100, 0, (byte_size(Node)),
           Node/binary, 106>>,
    ?assertEqual({ok, {mc, 5, {svc, Node}, []}, 0}, decode(Mc, O)),
    %% compressed alike
    Z = term_to_binary(binary_to_term(<<131, 104, 3, 119, 1, "m", 104, 2, 119, 3, "svc", 119, 4, "ok@h",
                                         107, 2000:16, (binary:copy(<<0>>, 2000))/binary>>), [compressed]),
    ?assertMatch({ok, {m, {svc, 'ok@h'}, _}, 0}, decode(Z, O#{max_decompressed => 1 bsl 20})),
    %% without the option: a new atom, within the budget
    ?assertEqual({error, {limit, {new_atoms, 1}}}, decode(M, opts(0))),
    {'EXIT', _} = (catch binary_to_existing_atom(Node)),
    %% a known node stays an atom
    ?assertEqual({ok, {m, {svc, nonode@nohost}, 1}, 0},
                 decode(term_to_binary({m, {svc, nonode@nohost}, 1}), O)).

scanner_rejects_fun_test() ->
    B = <<131, 104, 2, 119, 3, "zzq", 113, 119, 1, "m", 119, 1, "f", 97, 1>>,
    ?assertMatch({error, {bad_term, 'fun'}}, decode(B, opts(10))).
-endif.
