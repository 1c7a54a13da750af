%% @doc The fabric handshakes as pure functions (docs/protocol.md sections 2 and 3).
%%
%% Legacy: `{hello, Name}', `{challenge, Hex32}', `{response, md5hex(Challenge ++ Secret)}',
%% `{auth, success | failed}'. Extended: the hello name `"fabric-ext:<ver>:<64 hex>"',
%% `{challenge, Nonce, Offer}', `{response, ClientMac, AcceptBin}',
%% `{auth, success, ServerMac, InfoBin}', with HMAC-SHA256 over the exact frame bytes.
%% No I/O here: the connection process sends and receives, this module builds and checks.
-module(fabric_peer_handshake).

-export([extended_hello/1, legacy_hello/0, parse_hello/1,
         legacy_challenge/0, legacy_response/2, check_legacy_response/3,
         parse_legacy_challenge/1,
         offer/1, parse_offer/1, accept/1, parse_accept/2,
         client_mac/4, server_mac/5, check_mac/2,
         info/1, parse_info/1, hex/1, version/0, encode/1]).
%% hex/1 is also the test suites' way to write nonces as the transcripts do
-ignore_xref([hex/1]).

-export_type([hello/0]).

-type hello() :: {extended, pos_integer(), binary()} | legacy.

-define(VERSION, 1).
-define(EXT_PREFIX, "fabric-ext:").
-define(MAX_VERSION_DIGITS, 9).

%% @doc The highest extension version this implementation speaks.
-spec version() -> pos_integer().
version() -> ?VERSION.

%% @doc Handshake frames are plain `term_to_binary/1', never compressed.
-spec encode(term()) -> binary().
encode(Term) -> term_to_binary(Term).

%% @doc Our client's hello for a 32-byte client nonce.
-spec extended_hello(<<_:256>>) -> {hello, string()}.
extended_hello(<<_:256>> = Nonce) ->
    {hello, ?EXT_PREFIX ++ integer_to_list(?VERSION) ++ ":" ++ binary_to_list(hex(Nonce))}.

%% @doc The hello an original client sends (used by our client in legacy mode).
-spec legacy_hello() -> {hello, string()}.
legacy_hello() -> {hello, "localhost"}.

%% @doc Classify a first frame: an extended hello, a legacy hello, or not a hello at all.
-spec parse_hello(term()) -> hello() | {error, bad_hello}.
parse_hello({hello, Name}) ->
    case ext_name(Name) of
        {ok, Version, Nonce} -> {extended, Version, Nonce};
        error -> legacy
    end;
parse_hello(_) -> {error, bad_hello}.

ext_name(Name) when is_list(Name) ->
    case lists:prefix(?EXT_PREFIX, Name) of
        true ->
            {Digits, Rest} = lists:splitwith(fun(C) -> C >= $0 andalso C =< $9 end,
                                             lists:nthtail(length(?EXT_PREFIX), Name)),
            case {Digits, Rest} of
                {[_ | _], [$: | Hex]} when length(Digits) =< ?MAX_VERSION_DIGITS,
                                           length(Hex) =:= 64 ->
                    V = list_to_integer(Digits),
                    case V >= 1 andalso unhex(Hex) of
                        {ok, Nonce} -> {ok, V, Nonce};
                        _ -> error
                    end;
                _ -> error
            end;
        false -> error
    end;
ext_name(_) -> error.

%% @doc A legacy challenge: 32 lowercase hex characters from 16 CSPRNG bytes.
-spec legacy_challenge() -> string().
legacy_challenge() -> binary_to_list(hex(crypto:strong_rand_bytes(16))).

%% @doc The legacy response: lowercase hex of md5(Challenge ++ Secret), a string.
-spec legacy_response(string(), binary()) -> string().
legacy_response(Challenge, Secret) when is_list(Challenge), is_binary(Secret) ->
    binary_to_list(hex(crypto:hash(md5, [list_to_binary(Challenge), Secret]))).

%% @doc Constant-time check of a legacy response; anything but 32 lowercase hex chars fails.
-spec check_legacy_response(string(), binary(), term()) -> boolean().
check_legacy_response(Challenge, Secret, Response) when is_list(Response), length(Response) =:= 32 ->
    case lists:all(fun is_lower_hex/1, Response) of
        true ->
            Expected = list_to_binary(legacy_response(Challenge, Secret)),
            crypto:hash_equals(Expected, list_to_binary(Response));
        false -> false
    end;
check_legacy_response(_, _, _) -> false.

%% @doc A legacy challenge as our client accepts it (the original needs > 20 characters).
-spec parse_legacy_challenge(term()) -> {ok, string()} | error.
parse_legacy_challenge(C) when is_list(C), length(C) > 20, length(C) =< 1024 ->
    case lists:all(fun(X) -> is_integer(X) andalso X >= 0 andalso X =< 255 end, C) of
        true -> {ok, C};
        false -> error
    end;
parse_legacy_challenge(_) -> error.

%% @doc The server's offer map (binary keys) from its settings.
-spec offer(#{version := pos_integer(), features := [binary()], node := binary(),
              max_frame := pos_integer(), heartbeat := non_neg_integer(),
              credit => fabric_peer_credit:windows() | undefined,
              route_heartbeat => pos_integer() | undefined}) -> map().
offer(#{version := V, features := F, node := N, max_frame := M, heartbeat := H} = O) ->
    Base = with_windows(F, maps:get(credit, O, undefined),
                        #{<<"version">> => V, <<"features">> => F, <<"node">> => N,
                          <<"max_frame">> => M, <<"heartbeat">> => H}),
    %% only with `route' offered (16.1)
    case {lists:member(<<"route">>, F), maps:get(route_heartbeat, O, undefined)} of
        {true, RH} when is_integer(RH) -> Base#{<<"route_heartbeat">> => RH};
        _ -> Base
    end.

%% The credit windows (docs/protocol.md 12.1) go with the `credit' feature.
with_windows(F, {W, B, D}, Map) ->
    case lists:member(<<"credit">>, F) of
        true -> Map#{<<"credit_window">> => W, <<"credit_bytes">> => B, <<"credit_dest">> => D};
        false -> Map
    end;
with_windows(_, _, Map) -> Map.

%% The windows of a map that has `credit' in its features: integers >= 1, the
%% per-destination one not above the connection's.
windows(F, Map) ->
    case lists:member(<<"credit">>, F) of
        false -> {ok, undefined};
        true ->
            case {maps:get(<<"credit_window">>, Map, x), maps:get(<<"credit_bytes">>, Map, x),
                  maps:get(<<"credit_dest">>, Map, x)} of
                {W, B, D} when is_integer(W), is_integer(B), is_integer(D), W >= 1, B >= 1,
                               D >= 1, D =< W -> {ok, {W, B, D}};
                _ -> error
            end
    end.

%% @doc Validate a received offer; unknown keys are ignored.
-spec parse_offer(term()) -> {ok, map()} | {error, bad_offer}.
parse_offer(#{<<"version">> := V, <<"features">> := F, <<"node">> := N,
              <<"max_frame">> := M, <<"heartbeat">> := H} = Offer)
  when is_integer(V), V >= 1, is_list(F), is_binary(N), is_integer(M), M > 0,
       is_integer(H), H >= 0 ->
    case lists:all(fun is_binary/1, F) andalso windows(F, Offer) of
        {ok, Credit} ->
            RH = case maps:get(<<"route_heartbeat">>, Offer, undefined) of
                     X when is_integer(X), X >= 1 -> X;
                     _ -> undefined
                 end,
            {ok, #{version => V, features => F, node => N, max_frame => M, heartbeat => H,
                   credit => Credit, route_heartbeat => RH}};
        _ -> {error, bad_offer}
    end;
parse_offer(_) -> {error, bad_offer}.

%% @doc The client's accept map (binary keys); `resume' only when a session id is given,
%% `received' (the count of the `acks' feature) only with it.
-spec accept(#{features := [binary()], node := binary(), max_frame := pos_integer(),
               heartbeat := non_neg_integer(), resume => binary() | undefined,
               received => non_neg_integer() | undefined,
               credit => fabric_peer_credit:windows() | undefined}) -> map().
accept(#{features := F, node := N, max_frame := M, heartbeat := H} = A) ->
    Base = with_windows(F, maps:get(credit, A, undefined),
                        #{<<"features">> => F, <<"node">> => N, <<"max_frame">> => M,
                          <<"heartbeat">> => H}),
    case {maps:get(resume, A, undefined), maps:get(received, A, undefined)} of
        {undefined, _} -> Base;
        {S, undefined} when is_binary(S) -> Base#{<<"resume">> => S};
        {S, R} when is_binary(S), is_integer(R) -> Base#{<<"resume">> => S, <<"received">> => R}
    end.

%% @doc Validate a decoded accept map against the offered features.
-spec parse_accept(term(), [binary()]) -> {ok, map()} | {error, bad_accept | not_offered}.
parse_accept(#{<<"features">> := F, <<"node">> := N, <<"max_frame">> := M,
               <<"heartbeat">> := H} = A, Offered)
  when is_list(F), is_binary(N), is_integer(M), M > 0, is_integer(H), H >= 0 ->
    Resume = maps:get(<<"resume">>, A, undefined),
    Received = maps:get(<<"received">>, A, undefined),
    case lists:all(fun is_binary/1, F) andalso (Resume =:= undefined orelse is_binary(Resume))
        andalso (Received =:= undefined orelse (is_integer(Received) andalso Received >= 0))
        %% acks only with session (docs/protocol.md 11.1)
        andalso (not lists:member(<<"acks">>, F) orelse lists:member(<<"session">>, F))
        %% credit only with acks, and with its windows (12.1)
        andalso (not lists:member(<<"credit">>, F) orelse lists:member(<<"acks">>, F))
        andalso windows(F, A) of
        false -> {error, bad_accept};
        error -> {error, bad_accept};
        {ok, Credit} ->
            case F -- Offered of
                [] -> {ok, #{features => lists:usort(F), node => N, max_frame => M,
                             heartbeat => H, resume => Resume, received => Received,
                             credit => Credit}};
                _ -> {error, not_offered}
            end
    end;
parse_accept(_, _) -> {error, bad_accept}.

%% @doc ClientMac = HMAC-SHA256(Secret, "fabric-ext client\0" ++ lp(F1) ++ lp(F2) ++ lp(AcceptBin)).
-spec client_mac(binary(), binary(), binary(), binary()) -> binary().
client_mac(Secret, F1, F2, AcceptBin) ->
    crypto:mac(hmac, sha256, Secret,
               [<<"fabric-ext client", 0>>, lp(F1), lp(F2), lp(AcceptBin)]).

%% @doc ServerMac = HMAC-SHA256(Secret, "fabric-ext server\0" ++ lp(F1) ++ lp(F2) ++ lp(F3) ++ lp(InfoBin)).
-spec server_mac(binary(), binary(), binary(), binary(), binary()) -> binary().
server_mac(Secret, F1, F2, F3, InfoBin) ->
    crypto:mac(hmac, sha256, Secret,
               [<<"fabric-ext server", 0>>, lp(F1), lp(F2), lp(F3), lp(InfoBin)]).

%% @doc Constant-time comparison of an expected MAC with a received term.
-spec check_mac(binary(), term()) -> boolean().
check_mac(Expected, Got) when is_binary(Got), byte_size(Got) =:= byte_size(Expected) ->
    crypto:hash_equals(Expected, Got);
check_mac(_, _) -> false.

%% @doc The info map of a successful extended authentication.
%% With `acks': `received' (a resumed session) or `resume_refused' (a refused resume).
-spec info(#{session := binary() | undefined, resumed := boolean(),
             received => non_neg_integer(), resume_refused => binary()}) -> map().
info(#{session := undefined, resumed := R}) -> #{<<"resumed">> => R};
info(#{session := S, resumed := R} = I) ->
    Extra = maps:from_list([{atom_to_binary(K), V} || K <- [received, resume_refused],
                                                      V <- [maps:get(K, I, undefined)],
                                                      V =/= undefined]),
    Extra#{<<"session">> => S, <<"resumed">> => R}.

%% @doc Validate a decoded info map.
-spec parse_info(term()) ->
          {ok, #{session := binary() | undefined, resumed := boolean(),
                 received := non_neg_integer() | undefined, resume_refused := binary() | undefined,
                 refused := binary() | undefined}}
          | {error, bad_info}.
parse_info(#{} = I) ->
    S = maps:get(<<"session">>, I, undefined),
    R = maps:get(<<"resumed">>, I, false),
    N = maps:get(<<"received">>, I, undefined),
    Refused = maps:get(<<"resume_refused">>, I, undefined),
    Node = maps:get(<<"refused">>, I, undefined),
    case (S =:= undefined orelse is_binary(S)) andalso is_boolean(R)
        andalso (N =:= undefined orelse (is_integer(N) andalso N >= 0))
        andalso (Refused =:= undefined orelse is_binary(Refused))
        andalso (Node =:= undefined orelse is_binary(Node)) of
        true -> {ok, #{session => S, resumed => R, received => N, resume_refused => Refused,
                       refused => Node}};
        false -> {error, bad_info}
    end;
parse_info(_) -> {error, bad_info}.

%% lp(X): X after its size, a 32-bit big-endian integer.
-spec lp(binary()) -> binary().
lp(X) -> <<(byte_size(X)):32/big, X/binary>>.

%% @doc Lowercase hex.
-spec hex(binary()) -> binary().
hex(B) -> << <<(nibble(N))>> || <<N:4>> <= B >>.

nibble(N) when N < 10 -> $0 + N;
nibble(N) -> $a + N - 10.

is_lower_hex(C) -> (C >= $0 andalso C =< $9) orelse (C >= $a andalso C =< $f).

unhex(Hex) ->
    case lists:all(fun is_lower_hex/1, Hex) of
        true -> {ok, << <<(list_to_integer([H, L], 16))>> || [H, L] <- pairs(Hex) >>};
        false -> error
    end.

pairs([H, L | T]) -> [[H, L] | pairs(T)];
pairs([]) -> [].

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

%% Vectors 02/03: secret "secret".
legacy_vector_test() ->
    C = "ce7e5a220e0749da5543bce7f8d953fb",
    ?assertEqual("c645360649534f0afea7feb3ea3c7bfd", legacy_response(C, <<"secret">>)),
    ?assert(check_legacy_response(C, <<"secret">>, "c645360649534f0afea7feb3ea3c7bfd")),
    ?assertNot(check_legacy_response(C, <<"secret">>, "e94fb07be9a2c1c3e9be65fbc248b265")),
    ?assertNot(check_legacy_response(C, <<"secret">>, "short")),
    ?assertNot(check_legacy_response(C, <<"secret">>, "C645360649534F0AFEA7FEB3EA3C7BFD")),
    ?assertNot(check_legacy_response(C, <<"secret">>, <<"c645360649534f0afea7feb3ea3c7bfd">>)).

legacy_challenge_shape_test() ->
    C = legacy_challenge(),
    ?assertEqual(32, length(C)),
    ?assert(lists:all(fun is_lower_hex/1, C)),
    ?assertNotEqual(C, legacy_challenge()).

hello_grammar_test_() ->
    N = binary:copy(<<16#ab>>, 32),
    Hex = binary_to_list(hex(N)),
    [?_assertEqual({extended, 1, N}, parse_hello(extended_hello(N))),
     ?_assertEqual({extended, 7, N}, parse_hello({hello, "fabric-ext:7:" ++ Hex})),
     ?_assertEqual(legacy, parse_hello({hello, "localhost"})),
     ?_assertEqual(legacy, parse_hello({hello, "fabric-ext:1:" ++ tl(Hex)})),
     ?_assertEqual(legacy, parse_hello({hello, "fabric-ext:0:" ++ Hex})),
     ?_assertEqual(legacy, parse_hello({hello, "fabric-ext::" ++ Hex})),
     ?_assertEqual(legacy, parse_hello({hello, "fabric-ext:1:" ++ string:uppercase(Hex)})),
     ?_assertEqual(legacy, parse_hello({hello, "fabric-ext:1:" ++ Hex ++ "0"})),
     ?_assertEqual(legacy, parse_hello({hello, list_to_binary("fabric-ext:1:" ++ Hex)})),
     ?_assertEqual(legacy, parse_hello({hello, 42})),
     ?_assertEqual({error, bad_hello}, parse_hello({ok, "x"})),
     ?_assertEqual({error, bad_hello}, parse_hello({hello, a, b}))].

macs_bind_every_frame_test() ->
    S = <<"k">>,
    M = client_mac(S, <<"a">>, <<"b">>, <<"c">>),
    ?assertEqual(32, byte_size(M)),
    ?assertNotEqual(M, client_mac(S, <<"a">>, <<"bc">>, <<>>)),
    ?assertNotEqual(M, client_mac(<<"k2">>, <<"a">>, <<"b">>, <<"c">>)),
    ?assertNotEqual(M, server_mac(S, <<"a">>, <<"b">>, <<"c">>, <<>>)),
    ?assert(check_mac(M, M)),
    ?assertNot(check_mac(M, <<0:256>>)),
    ?assertNot(check_mac(M, not_a_binary)).

%% HMAC input layout of section 3.3, computed independently.
client_mac_layout_test() ->
    Expected = crypto:mac(hmac, sha256, <<"s">>,
                          <<"fabric-ext client", 0, 0, 0, 0, 1, "x", 0, 0, 0, 2, "yy", 0, 0, 0, 0>>),
    ?assertEqual(Expected, client_mac(<<"s">>, <<"x">>, <<"yy">>, <<>>)).

offer_accept_test() ->
    O = offer(#{version => 1, features => [<<"maps">>, <<"link">>], node => <<"n@h">>,
                max_frame => 100, heartbeat => 0}),
    {ok, PO} = parse_offer(O#{<<"future">> => x}),
    ?assertEqual(1, maps:get(version, PO)),
    A = accept(#{features => [<<"maps">>], node => <<"c@h">>, max_frame => 10, heartbeat => 5}),
    ?assertMatch({ok, #{features := [<<"maps">>], resume := undefined}},
                 parse_accept(A, [<<"maps">>, <<"link">>])),
    ?assertEqual({error, not_offered}, parse_accept(A, [<<"link">>])),
    ?assertEqual({error, bad_accept}, parse_accept(A#{<<"features">> => [maps]}, [])),
    ?assertEqual({error, bad_accept}, parse_accept(#{}, [])),
    R = accept(#{features => [], node => <<"c">>, max_frame => 1, heartbeat => 0, resume => <<1>>}),
    ?assertMatch({ok, #{resume := <<1>>, received := undefined}}, parse_accept(R, [])),
    Rn = accept(#{features => [<<"session">>, <<"acks">>], node => <<"c">>, max_frame => 1,
                  heartbeat => 0, resume => <<1>>, received => 12}),
    ?assertMatch({ok, #{received := 12}}, parse_accept(Rn, [<<"session">>, <<"acks">>])),
    %% acks without session breaks 11.1
    NoSession = accept(#{features => [<<"acks">>], node => <<"c">>, max_frame => 1, heartbeat => 0}),
    ?assertEqual({error, bad_accept}, parse_accept(NoSession, [<<"session">>, <<"acks">>])).

credit_windows_test() ->
    F = [<<"session">>, <<"acks">>, <<"credit">>],
    O = offer(#{version => 1, features => F, node => <<"n">>, max_frame => 9, heartbeat => 0,
                credit => {16, 100, 4}}),
    ?assertMatch(#{<<"credit_window">> := 16, <<"credit_bytes">> := 100, <<"credit_dest">> := 4}, O),
    ?assertMatch({ok, #{credit := {16, 100, 4}}}, parse_offer(O)),
    ?assertEqual({error, bad_offer}, parse_offer(maps:remove(<<"credit_dest">>, O))),
    ?assertEqual({error, bad_offer}, parse_offer(O#{<<"credit_dest">> => 17})),
    ?assertEqual({error, bad_offer}, parse_offer(O#{<<"credit_window">> => 0})),
    %% without the feature, no keys
    ?assertNot(is_map_key(<<"credit_window">>,
                          offer(#{version => 1, features => [<<"acks">>], node => <<"n">>,
                                  max_frame => 9, heartbeat => 0, credit => {1, 1, 1}}))),
    A = accept(#{features => F, node => <<"c">>, max_frame => 1, heartbeat => 0, credit => {8, 50, 2}}),
    ?assertMatch({ok, #{credit := {8, 50, 2}}}, parse_accept(A, F)),
    ?assertEqual({error, bad_accept}, parse_accept(maps:remove(<<"credit_bytes">>, A), F)),
    NoAcks = accept(#{features => [<<"session">>, <<"credit">>], node => <<"c">>, max_frame => 1,
                      heartbeat => 0, credit => {8, 50, 2}}),
    ?assertEqual({error, bad_accept}, parse_accept(NoAcks, F)).

info_test() ->
    ?assertMatch({ok, #{session := <<1>>, resumed := true, received := undefined,
                        resume_refused := undefined}},
                 parse_info(info(#{session => <<1>>, resumed => true}))),
    ?assertEqual(#{<<"session">> => <<1>>, <<"resumed">> => true},
                 info(#{session => <<1>>, resumed => true})),
    ?assertMatch({ok, #{session := undefined, resumed := false}},
                 parse_info(info(#{session => undefined, resumed => false}))),
    ?assertMatch({ok, #{received := 7}},
                 parse_info(info(#{session => <<1>>, resumed => true, received => 7}))),
    ?assertMatch({ok, #{resume_refused := <<"not_resumable">>}},
                 parse_info(info(#{session => <<1>>, resumed => false,
                                   resume_refused => <<"not_resumable">>}))),
    ?assertEqual({error, bad_info}, parse_info(#{<<"resumed">> => true, <<"received">> => -1})),
    ?assertEqual({error, bad_info}, parse_info(#{<<"resumed">> => 1})),
    ?assertEqual({error, bad_info}, parse_info(x)).
-endif.
