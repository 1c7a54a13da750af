%% @doc Frames after the handshake (docs/protocol.md sections 1, 4, 5 and 9), as pure
%% functions: how each frame is encoded, the size limits, and the classification of a
%% decoded frame according to the mode and the agreed features.
-module(fabric_peer_frame).

-export([take/2, append/2, header_reason/2, encode_message/3, encode_plain/1, check_size/2, classify/3,
         default/1, error_frame/2, error_codes/0, new_window/2, note_error/2]).

-export_type([frame/0, window/0, buffer/0]).

%% Up to this encoded size incompressible/1 is tried: it holds for every frame of 25 bytes
%% or less, for most up to 33, for a third or less above (random payloads; a frame it does
%% not prove costs ~2 us more), and for none past 64.
-define(MAX_INCOMPRESSIBLE, 36).
%% used by the conformance suite (the error codes it checks against the spec)
-ignore_xref([error_codes/0]).

%% `{Name, NodeBin}': a node that is no atom here (fabric_peer_etf's `dest_node')
-type dest() :: integer() | atom() | {atom(), atom() | binary()}.
-type frame() :: {m, dest(), term()}
               | {dead, integer(), term()}
               | {r, integer()}
               | {whereis, integer(), binary()}
               | {whereis_reply, integer(), term()}
               | {link, integer(), integer()}
               | {unlink, integer(), integer()}
               | {exit2, integer(), integer(), term()}
               | {link_exit, integer(), integer(), term()}
               | {heartbeat, non_neg_integer()}
               | {heartbeat_ack, non_neg_integer()}
               | {error, binary(), binary()}
               | {route, tuple()}
               | {global, tuple()}.

%% Received bytes not yet split into frames. `<<>>' (or any binary) is a buffer too, so a
%% caller may start from, or reset to, `<<>>'. Otherwise `{Need, Chunks, Size}': the chunks
%% received, newest first, `Size' bytes in all, and `Need' the whole length (4-byte header
%% included) of the frame being received, or `header' while fewer than 4 bytes are there.
%% Appending a chunk is O(1) and a frame is joined once, when all of it is there: receiving
%% a frame of N bytes in chunks costs O(N), not O(N^2 / chunk) as re-concatenating would.
-type buffer() :: binary() | {pos_integer() | header, [binary()], non_neg_integer()}.

%% Sliding error window of section 9: frame numbers of the recent errors.
-opaque window() :: #{max := non_neg_integer(), size := pos_integer(), errs := queue:queue()}.

%% @doc Defaults, each with the reason for its value.
-spec default(atom()) -> term().
%% Every handshake frame is < 1 KiB; 16 KiB leaves room and bounds a pre-auth peer.
default(max_handshake_frame) -> 16384;
%% The doc's default: large messages work, a peer announcing gigabytes is refused.
default(max_frame) -> 64 * 1024 * 1024;
default(handshake_timeout) -> 10000;
default(session_timeout) -> 60000;
%% Terms in one received payload (fabric_peer_etf: memory is per term, ~16 bytes for a list
%% cell, and a received term exists a few times over): with the per-compressed-byte bound
%% there, a frame costs memory in proportion to what arrived, and at most ~100 MiB.
default(max_terms) -> 2000000;
%% Per connection; a server also bounds the total (section 8).
default(max_new_atoms) -> 1000;
default(max_server_atoms) -> 50000;
default(max_errors) -> 20;
default(error_window) -> 200;
%% A heartbeat every 15 s: a dead peer is noticed within 45 s without measurable traffic.
default(heartbeat) -> 15000;
%% Messages sent while a client is reconnecting are queued up to this many (section 7).
default(max_queue) -> 1000;
%% Proxies and exports per connection (section 9): a proxy is a process (~3 KiB), so a
%% peer shipping ids without end could otherwise exhaust memory; generous for real use.
default(max_proxies) -> 100000;
default(max_exports) -> 100000;
%% Detached sessions a server keeps for resumption; beyond, the oldest waiting one expires.
default(max_kept_sessions) -> 1024;
%% Failed authentications per address within auth_failure_window (ms) before the address is
%% refused for auth_block_time (ms); the Python server's defaults. 0 failures: no throttling.
default(max_auth_failures) -> 5;
default(auth_failure_window) -> 60000;
default(auth_block_time) -> 60000;
%% Connection admission (fabric_peer_admission): connections in all (each is a process and a
%% socket), connections not yet authenticated, and those from one address. Beyond the two
%% pending limits the oldest pending connection is evicted, never the newest refused.
default(max_connections) -> 4096;
default(max_pending) -> 256;
default(max_pending_per_address) -> 64.

%% @doc Split one frame off the received bytes: a 4-byte big-endian length, then the
%% payload. The length is checked against `Limit' as soon as the 4 bytes are there, before
%% any of the body is buffered (section 1). `Rest' is the buffer after the frame.
-spec take(buffer(), pos_integer()) ->
          {ok, binary(), buffer()} | more
          | {error, {frame_too_large, non_neg_integer()}}.
take(<<Len:32, _/binary>>, Limit) when Len > Limit -> {error, {frame_too_large, Len}};
take(<<Len:32, Frame:Len/binary, Rest/binary>>, _) -> {ok, Frame, Rest};
take(Bin, _) when is_binary(Bin) -> more;
take({header, Chunks, Size}, Limit) when Size >= 4 ->
    take(join(Chunks), Limit);
take({header, _, _}, _) -> more;
take({Need, _, _}, Limit) when Need - 4 > Limit -> {error, {frame_too_large, Need - 4}};
take({Need, _, Size}, _) when Size < Need -> more;
take({_, Chunks, _}, Limit) -> take(join(Chunks), Limit).

%% @doc Why a length header over the limit ended a connection. A client in its handshake
%% reads what the server said first: a TLS record (a plain client facing a TLS server
%% reads the server's alert), an HTTP reply, or anything else that is not fabric.
-spec header_reason(server | client, non_neg_integer()) -> frame_too_large | {not_fabric, binary()}.
header_reason(client, Len) ->
    case <<Len:32>> of
        <<Type, 3, Minor, _>> when Type >= 20, Type =< 23, Minor =< 4 ->
            {not_fabric, <<"the server speaks TLS: connect with the tls option">>};
        <<"HTTP">> -> {not_fabric, <<"this is not a fabric server (it answered HTTP)">>};
        _ -> {not_fabric, <<"this is not a fabric server (its first bytes are no fabric frame)">>}
    end;
header_reason(server, _) -> frame_too_large.

%% @doc Add received bytes to a buffer.
-spec append(buffer(), binary()) -> buffer().
append(<<>>, Data) -> Data;
append(<<Len:32, _/binary>> = Bin, Data) -> {Len + 4, [Data, Bin], byte_size(Bin) + byte_size(Data)};
append(Bin, Data) when is_binary(Bin) ->
    Size = byte_size(Bin) + byte_size(Data),
    case Size >= 4 of
        true -> append(<<>>, <<Bin/binary, Data/binary>>);       % under 4 + 64 KiB: cheap
        false -> {header, [Data, Bin], Size}
    end;
append({header, Chunks, _}, Data) -> append(join(Chunks), Data);
append({Need, Chunks, Size}, Data) -> {Need, [Data | Chunks], Size + byte_size(Data)}.

join(Chunks) -> iolist_to_binary(lists:reverse(Chunks)).

%% An `m' frame exactly as the original encodes it: compressed only when smaller. A small
%% term whose plain encoding zlib provably cannot shrink enough is encoded plain at once:
%% the same bytes, without running zlib to discard its output (~6 us, issue 15).
-spec encode_message(term()) -> binary().
encode_message(Term) ->
    case erlang:external_size(Term, [{minor_version, 1}]) =< ?MAX_INCOMPRESSIBLE of
        true ->
            Plain = term_to_binary(Term, [{minor_version, 1}]),
            case incompressible(Plain) of
                true -> Plain;
                false -> term_to_binary(Term, [{minor_version, 1}, compressed])
            end;
        false -> term_to_binary(Term, [{minor_version, 1}, compressed])
    end.

%% `term_to_binary(T, [compressed])' keeps the compressed form only when zlib's output for
%% the L bytes after the version byte is at most L - 5 bytes: 2 of zlib header, 4 of
%% checksum, so a deflate block of at most 8(L - 11) bits. A lower bound of that block
%% (deflate, RFC 1951), from R, the positions whose 3 bytes occurred at an earlier
%% position (a match of length l >= 3 covers l - 2 of them: at most R + 2m bytes in m =< R
%% matches, the others are literals):
%% - stored: more than 8L bits;
%% - fixed Huffman: 3 + 8 per literal + 12 per match + 7 >= 10 + 8L - 12R bits;
%% - dynamic Huffman: 17 bits of header, >= 12 for the code-length code, the code lengths
%%   of symbols 0-256 (every distinct byte is a literal at its first occurrence, 256 ends
%%   the block; a run of zeros at least zeros/1 bits, of used ones min(run, 3), a repeat
%%   code having 2 extra bits or more), then the symbols: the K distinct literals
%%   and the end are K + 1 codewords of a prefix code, at least min_total(K + 1) bits in
%%   all; every other literal at least 1 bit, every match 2 (a length and a distance
%%   code): >= min_total(K + 1) + L - R - K.
%% When both Huffman bounds exceed 8(L - 11) the compressed form is never kept.
incompressible(<<131, Body/binary>>) ->
    L = byte_size(Body),
    Limit = 8 * (L - 11),
    Distinct = lists:usort(binary_to_list(Body)),
    K = length(Distinct),
    Dynamic = 29 + code_lengths(Distinct, 0, 0) + min_total(K + 1) + L - K,
    %% (R lowers both bounds: computed only when the others leave room)
    Dynamic > Limit andalso 10 + 8 * L > Limit andalso
        begin
            R = repeated_3grams(Body),
            Dynamic - R > Limit andalso 10 + 8 * L - 12 * R > Limit
        end.

%% The least total length of N codewords of a binary prefix code (a complete tree as
%% balanced as can be: N * floor(log2 N) + 2 (N - 2^floor(log2 N))).
min_total(N) ->
    D = floor_log2(N, 0),
    N * D + 2 * (N - (1 bsl D)).

floor_log2(N, D) when N >= 2 -> floor_log2(N bsr 1, D + 1);
floor_log2(_, D) -> D.

%% (as many as the 3-byte sequences less the distinct ones: the equal neighbours once sorted)
repeated_3grams(Body) -> equal_neighbours(lists:sort(grams(Body, [])), 0).

grams(<<G:24, _/binary>> = B, Acc) ->
    <<_, Rest/binary>> = B,
    grams(Rest, [G | Acc]);
grams(_, Acc) -> Acc.

equal_neighbours([X, X | T], N) -> equal_neighbours([X | T], N + 1);
equal_neighbours([_ | T], N) -> equal_neighbours(T, N);
equal_neighbours([], N) -> N.

%% The bound on the code lengths of symbols 0..256 given the distinct bytes, ascending:
%% the runs of zeros between them (and before 256) and the runs of adjacent used ones.
code_lengths([], Next, Bits) -> Bits + zeros(256 - Next) + 1;
code_lengths([X | T], Next, Bits) -> used(T, X + 1, 1, Bits + zeros(X - Next)).

used([X | T], X, N, Bits) -> used(T, X + 1, N + 1, Bits);
used(T, Next, N, Bits) -> code_lengths(T, Next, Bits + min(N, 3)).

%% The least bits for N zero code lengths: each code-length symbol takes a bit or more, a
%% single 0 covers one, 16 (2 extra bits) 3-6, 17 (3 extra bits) 3-10, 18 (7 extra bits)
%% 11-138; the cheapest mix of them (equal to that minimum for every N, by exhaustion).
zeros(N) when N =< 3 -> N;
zeros(N) when N =< 6 -> 3;
zeros(N) when N =< 10 -> 4;
zeros(N) when N =< 12 -> N - 6;
zeros(N) when N =< 16 -> 7;
zeros(N) when N =< 138 -> 8;
zeros(N) -> 8 + zeros(N - 138).

%% @doc An `m' (or `mc') frame to a peer: to a legacy peer as the original encodes it; to one
%% of our peers plain (docs/protocol.md 4.1: for a small term zlib only costs time, and its
%% output would be discarded), or as the original does when the `compress' option is on.
-spec encode_message(legacy | extended, boolean(), term()) -> binary().
encode_message(extended, false, Term) -> term_to_binary(Term, [{minor_version, 1}]);
encode_message(_, _, Term) -> encode_message(Term).

%% @doc Handshake, DEAD and extended frames: plain `term_to_binary/1'.
-spec encode_plain(term()) -> binary().
encode_plain({credit, Grants, Bytes} = Term) when is_list(Grants) ->
    %% a grant for a `{Name, Node}' whose node is no atom here (a binary: fabric_peer_etf's
    %% `dest_node') names that node as the atom the peer sent
    case lists:any(fun({{_, N}, _}) -> is_binary(N); (_) -> false end, Grants) of
        true ->
            iolist_to_binary([<<131, 104, 3>>, body(credit), <<108, (length(Grants)):32>>,
                              [[<<104, 2>>, grant_dest(D), body(K)] || {D, K} <- Grants],
                              <<106>>, body(Bytes)]);
        false -> term_to_binary(Term)
    end;
encode_plain(Term) -> term_to_binary(Term).

grant_dest({Name, Node}) when is_binary(Node) ->
    [<<104, 2>>, body(Name), atom_ext(Node)];
grant_dest(D) -> body(D).

atom_ext(Text) when byte_size(Text) < 256 -> <<119, (byte_size(Text)), Text/binary>>;
atom_ext(Text) -> <<118, (byte_size(Text)):16, Text/binary>>.

%% A term's external format without the version byte.
body(T) ->
    <<131, B/binary>> = term_to_binary(T),
    B.

%% @doc A sender refuses, before writing, a frame longer than the peer's limit.
-spec check_size(binary(), pos_integer()) -> ok | {error, {frame_too_large, pos_integer(), pos_integer()}}.
check_size(Bin, Limit) when byte_size(Bin) =< Limit -> ok;
check_size(Bin, Limit) -> {error, {frame_too_large, byte_size(Bin), Limit}}.

%% @doc Classify a decoded frame. Anything that is not a frame of the mode, or belongs to
%% a feature that was not agreed, is `{error, unknown_frame}'.
-spec classify(term(), legacy | extended, #{binary() => true}) -> frame() | {error, unknown_frame}.
classify({m, Dest, Payload}, _, _) when is_integer(Dest); is_atom(Dest) -> {m, Dest, Payload};
classify({m, {Name, Node}, Payload}, _, _) when is_atom(Name), is_atom(Node) orelse is_binary(Node) ->
    {m, {Name, Node}, Payload};
classify({'DEAD', {pr, Id}, Reason}, _, _) when is_integer(Id) -> {dead, Id, Reason};
classify({r, _Token, _Name, Id}, _, _) when is_integer(Id) -> {r, Id};
classify(Frame, extended, F) -> extended(Frame, F);
classify(_, legacy, _) -> {error, unknown_frame}.

extended({whereis, Req, Name}, F) when is_integer(Req), Req > 0, is_binary(Name) ->
    feature(<<"whereis">>, F, {whereis, Req, Name});
extended({whereis_reply, Req, Result}, #{<<"route">> := true}) when is_integer(Req) ->
    {whereis_reply, Req, Result};
extended({whereis_reply, Req, Result}, F) when is_integer(Req) ->
    feature(<<"whereis">>, F, {whereis_reply, Req, Result});
extended(T, #{<<"route">> := true}) when element(1, T) =:= whereis_node; element(1, T) =:= nodes;
                                         element(1, T) =:= nodes_reply; element(1, T) =:= nodeup;
                                         element(1, T) =:= nodedown ->
    case fabric_peer_route:classify(T) of
        {error, _} = E -> E;
        Frame -> {route, Frame}
    end;
extended(T, #{<<"global">> := true}) when element(1, T) =:= register_global;
                                          element(1, T) =:= unregister_global;
                                          element(1, T) =:= global_reply ->
    case fabric_peer_cluster_global:classify(T) of
        {error, _} = E -> E;
        Frame -> {global, Frame}
    end;
extended(T, #{<<"pg">> := true}) when element(1, T) =:= pg_join; element(1, T) =:= pg_leave;
                                      element(1, T) =:= pg_members; element(1, T) =:= pg_reply ->
    %% section 18: through the `global' hook, to fabric_peer_cluster_pg
    case fabric_peer_cluster_pg:classify(T) of
        {error, _} = E -> E;
        Frame -> {global, Frame}
    end;
extended({link, A, B}, F) when is_integer(A), is_integer(B) -> feature(<<"link">>, F, {link, A, B});
extended({unlink, A, B}, F) when is_integer(A), is_integer(B) -> feature(<<"link">>, F, {unlink, A, B});
extended({exit2, A, B, R}, F) when is_integer(A), is_integer(B) ->
    feature(<<"link">>, F, {exit2, A, B, R});
extended({link_exit, A, B, R}, F) when is_integer(A), is_integer(B) ->
    feature(<<"link_exit">>, F, {link_exit, A, B, R});
extended({heartbeat, N}, F) when is_integer(N), N >= 0 -> feature(<<"heartbeat">>, F, {heartbeat, N});
extended({heartbeat_ack, N}, F) when is_integer(N), N >= 0 ->
    feature(<<"heartbeat">>, F, {heartbeat_ack, N});
extended({error, Code, Msg}, F) when is_binary(Code), is_binary(Msg) ->
    feature(<<"error">>, F, {error, Code, Msg});
extended(_, _) -> {error, unknown_frame}.

feature(Name, F, Frame) ->
    case is_map_key(Name, F) of
        true -> Frame;
        false -> {error, unknown_frame}
    end.

%% @doc The error codes of section 9.
-spec error_codes() -> [atom()].
error_codes() ->
    [frame_too_large, auth_failed, bad_term, unknown_frame, unknown_id, not_allowed,
     bad_payload, limit, too_many_errors].

%% @doc `{error, CodeBin, MessageBin}' (section 5.4).
-spec error_frame(atom(), iodata() | term()) -> {error, binary(), binary()}.
error_frame(Code, Detail) ->
    Msg = try iolist_to_binary(Detail)
          catch error:badarg -> iolist_to_binary(io_lib:format("~0tP", [Detail, 12]))
          end,
    {error, atom_to_binary(Code, utf8), Msg}.

%% @doc An empty error window: more than `Max' errors among the last `Size' frames closes.
-spec new_window(non_neg_integer(), pos_integer()) -> window().
new_window(Max, Size) -> #{max => Max, size => Size, errs => queue:new()}.

%% @doc Record an error at frame number `N'; `close' when the window is over its limit.
-spec note_error(non_neg_integer(), window()) -> {ok | close, window()}.
note_error(N, #{max := Max, size := Size, errs := Q0} = W) ->
    Q = drop_old(queue:in(N, Q0), N - Size),
    {case queue:len(Q) > Max of true -> close; false -> ok end, W#{errs := Q}}.

drop_old(Q, Oldest) ->
    case queue:peek(Q) of
        {value, X} when X =< Oldest -> drop_old(queue:drop(Q), Oldest);
        _ -> Q
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

%% How many bytes a buffer holds.
buffered(Bin) when is_binary(Bin) -> byte_size(Bin);
buffered({_, _, Size}) -> Size.

%% Our encoder reproduces the original's frames (vectors 09, 14, 07 are re-encodings).
encode_like_original_test() ->
    ?assertEqual(<<131, 104, 3, 100, 0, 1, $m, 100, 0, 13, "simple_server", 100, 0, 12,
                   "just_an_atom">>,
                 encode_message({m, simple_server, just_an_atom})),
    ?assertEqual(encode_plain({'DEAD', {pr, 2}, normal}),
                 <<131, 104, 3, 100, 0, 4, "DEAD", 104, 2, 100, 0, 2, "pr", 97, 2, 100, 0, 6, "normal">>),
    Big = encode_message({m, 1, <<0:81920>>}),
    ?assertMatch(<<131, 80, _/binary>>, Big).

classify_legacy_test_() ->
    [?_assertEqual({m, 1, x}, classify({m, 1, x}, legacy, #{})),
     ?_assertEqual({m, {a, b}, x}, classify({m, {a, b}, x}, legacy, #{})),
     ?_assertEqual({dead, 2, normal}, classify({'DEAD', {pr, 2}, normal}, legacy, #{})),
     ?_assertEqual({r, 5}, classify({r, token, simple_server, 5}, legacy, #{})),
     ?_assertEqual({error, unknown_frame}, classify({foo, bar}, legacy, #{})),
     ?_assertEqual({error, unknown_frame}, classify({m, "x", y}, legacy, #{})),
     ?_assertEqual({error, unknown_frame}, classify({whereis, 1, <<"p">>}, legacy, #{})),
     ?_assertEqual({error, unknown_frame}, classify({heartbeat, 1}, legacy, #{}))].

classify_extended_test_() ->
    F = #{<<"whereis">> => true, <<"link">> => true},
    [?_assertEqual({whereis, 1, <<"p">>}, classify({whereis, 1, <<"p">>}, extended, F)),
     ?_assertEqual({link, 1, 2}, classify({link, 1, 2}, extended, F)),
     ?_assertEqual({error, unknown_frame}, classify({heartbeat, 1}, extended, F)),
     ?_assertEqual({error, unknown_frame}, classify({whereis, 0, <<"p">>}, extended, F)),
     ?_assertEqual({error, unknown_frame}, classify({whereis, 1, p}, extended, F))].

take_test_() ->
    [?_assertEqual(more, take(<<>>, 10)),
     ?_assertEqual(more, take(<<0, 0>>, 10)),
     ?_assertEqual(more, take(<<0, 0, 0, 3, 1, 2>>, 10)),
     ?_assertEqual({ok, <<1, 2, 3>>, <<>>}, take(<<0, 0, 0, 3, 1, 2, 3>>, 10)),
     ?_assertEqual({ok, <<>>, <<0>>}, take(<<0, 0, 0, 0, 0>>, 10)),
     ?_assertEqual({ok, <<1>>, <<0, 0, 0, 1, 2>>}, take(<<0, 0, 0, 1, 1, 0, 0, 0, 1, 2>>, 10)),
     %% refused from the header alone
     ?_assertEqual({error, {frame_too_large, 11}}, take(<<0, 0, 0, 11>>, 10)),
     ?_assertEqual({error, {frame_too_large, 16#ffffffff}}, take(<<255, 255, 255, 255>>, 10))].

%% A frame arriving in many chunks, split at every possible place, comes out whole.
chunked_take_test() ->
    Frames = [<<>>, <<1>>, <<2, 3, 4, 5, 6>>, binary:copy(<<7>>, 300)],
    Wire = iolist_to_binary([[<<(byte_size(F)):32>>, F] || F <- Frames]),
    [begin
         Chunks = chunks(Wire, Step),
         ?assertEqual(Frames, feed(Chunks, <<>>, []))
     end || Step <- [1, 2, 3, 4, 5, 7, 64, byte_size(Wire)]].

chunks(<<>>, _) -> [];
chunks(B, N) when byte_size(B) =< N -> [B];
chunks(B, N) -> <<C:N/binary, R/binary>> = B, [C | chunks(R, N)].

feed([], Buf, Acc) -> ?assertEqual(0, buffered(Buf)), lists:reverse(Acc);
feed([C | Cs], Buf0, Acc0) ->
    {Buf, Acc} = drain(append(Buf0, C), Acc0),
    feed(Cs, Buf, Acc).

drain(Buf, Acc) ->
    case take(Buf, 1000) of
        {ok, F, Rest} -> drain(Rest, [F | Acc]);
        more -> {Buf, Acc}
    end.

%% The limit is checked however the header arrived (here a byte at a time).
chunked_limit_test() ->
    B1 = append(append(<<>>, <<0, 0>>), <<0>>),
    ?assertEqual(more, take(B1, 10)),
    B2 = append(append(B1, <<11>>), <<"x">>),
    ?assertEqual({error, {frame_too_large, 11}}, take(B2, 10)).

header_reason_test_() ->
    [?_assertMatch({not_fabric, <<"the server speaks TLS", _/binary>>}, header_reason(client, 16#15030300)),
     ?_assertMatch({not_fabric, <<"this is not a fabric server (it answered HTTP)">>},
                   header_reason(client, 16#48545450)),
     ?_assertMatch({not_fabric, <<"this is not a fabric server", _/binary>>}, header_reason(client, 16#00ffffff)),
     ?_assertEqual(frame_too_large, header_reason(server, 16#15030300))].

size_test() ->
    ?assertEqual(ok, check_size(<<1, 2>>, 2)),
    ?assertEqual({error, {frame_too_large, 3, 2}}, check_size(<<1, 2, 3>>, 2)).

window_test() ->
    W0 = new_window(2, 10),
    {ok, W1} = note_error(1, W0),
    {ok, W2} = note_error(2, W1),
    ?assertMatch({close, _}, note_error(3, W2)),
    %% old errors leave the window
    ?assertMatch({ok, _}, note_error(12, W2)).

error_frame_test() ->
    ?assertEqual({error, <<"limit">>, <<"x">>}, error_frame(limit, "x")),
    ?assertMatch({error, <<"bad_term">>, <<"{a,b}">>}, error_frame(bad_term, {a, b})).

%% Every recorded vector decodes safely (the scanner agrees with binary_to_term).
vectors_decode_test() ->
    Dir = fabric_peer_test_lib:vector_dir(),
    Files = filelib:wildcard(filename:join(Dir, "*.bin")),
    ?assert(length(Files) >= 50),
    lists:foreach(
      fun(File) ->
              {ok, Bin} = file:read_file(File),
              Res = fabric_peer_etf:decode(Bin, #{atoms_left => 100,
                                                  max_decompressed => default(max_frame)}),
              Base = filename:basename(File),
              case Base of
                  "42_" ++ _ -> ?assertMatch({error, {bad_term, _}}, Res);
                  "45_" ++ _ -> ?assertMatch({error, {bad_term, _}}, Res);
                  "32_" ++ _ -> ?assertMatch({error, {bad_term, _}}, Res);
                  _ -> ?assertMatch({ok, _, _}, Res, Base)
              end
      end, Files).
-endif.
