%% @doc Option validation: the user's option map becomes the complete settings map every
%% process of a server or client reads. Unknown keys are refused (a typo must not silently
%% fall back to a default that weakens security).
-module(fabric_peer_opts).

-export([normalize/3, all_features/0]).
%% all_features/0: for the test suites (every feature offered)
-ignore_xref([all_features/0]).

-define(ALL_FEATURES, [<<"whereis">>, <<"link">>, <<"maps">>, <<"bitstrings">>, <<"ports">>,
                       <<"funs">>, <<"heartbeat">>, <<"error">>, <<"session">>,
                       <<"acks">>, <<"credit">>, <<"link_exit">>, <<"route">>, <<"global">>,
                       <<"pg">>]).

%% @doc The version 1 features this implementation speaks (docs/protocol.md section 3.5).
-spec all_features() -> [binary()].
all_features() -> ?ALL_FEATURES.

%% @doc Validate and complete the options of a server or a client.
-spec normalize(server | client, iodata(), map()) -> {ok, map()} | {error, {bad_option, term()}}.
normalize(Role, Secret, Opts) when is_map(Opts) ->
    try
        S = secret(Secret),
        Defaults = defaults(Role),
        Unknown = maps:keys(Opts) -- maps:keys(Defaults),
        Unknown =:= [] orelse throw({bad_option, {unknown, Unknown}}),
        M = maps:merge(Defaults, Opts),
        maps:foreach(fun check/2, M),
        check_combination(Role, M),
        M1 = M#{secret => S, role => Role, tls => tls(Role, maps:get(tls, M)),
                features => features([to_bin(F) || F <- maps:get(features, M)]),
                node => node_name(maps:get(node, M))},
        {ok, fabric_peer_router:settings(
               maps:get(node, M) =:= default,
               M1#{features => fabric_peer_cluster_global:features(Role, M1)})}
    catch throw:{bad_option, _} = E -> {error, E}
    end;
normalize(_, _, Opts) -> {error, {bad_option, {not_a_map, Opts}}}.

defaults(Role) ->
    F = fun fabric_peer_frame:default/1,
    A = fun acks_default/1,
    Common = #{allowed => [], allow_legacy_auth => false,
               max_frame => F(max_frame), max_handshake_frame => F(max_handshake_frame),
               handshake_timeout => F(handshake_timeout),
               session_timeout => F(session_timeout), max_new_atoms => F(max_new_atoms),
               force_system_names => [], routable_nodes => [], features => ?ALL_FEATURES,
               heartbeat => F(heartbeat), node => default, max_queue => F(max_queue),
               max_errors => F(max_errors), error_window => F(error_window),
               max_proxies => F(max_proxies), max_exports => F(max_exports),
               max_terms => F(max_terms),
               outbox_frames => A(outbox_frames), outbox_bytes => A(outbox_bytes),
               ack_every => A(ack_every), ack_delay => A(ack_delay),
               max_pending_messages => A(max_pending_messages), send_timeout => A(send_timeout),
               max_confirms => A(max_confirms),
               credit_window => A(credit_window), credit_bytes => A(credit_bytes),
               credit_dest => A(credit_dest), mailbox_high => A(mailbox_high),
               grant_every => A(grant_every), grant_delay => A(grant_delay),
               undelivered => owner, tls => false, compress => false},
    case Role of
        server -> Common#{ip => {127, 0, 0, 1}, acceptors => 4, mode => extended,
                          max_server_atoms => F(max_server_atoms),
                          max_kept_sessions => F(max_kept_sessions),
                          max_auth_failures => F(max_auth_failures),
                          auth_failure_window => F(auth_failure_window),
                          auth_block_time => F(auth_block_time),
                          max_connections => F(max_connections), max_pending => F(max_pending),
                          max_pending_per_address => F(max_pending_per_address),
                          refuse_remote_exits => false,
                          routing => false, route_heartbeat => 1000, route_grace => 10000,
                          route_max_proxies => 10000, cluster => false,
                          register_global => false, client_groups => false};
        client -> Common#{mode => extended, reconnect => true, reconnect_min => 100,
                          reconnect_max => 30000, connect_timeout => 5000,
                          close_with_owner => true, fallbacks => []}
    end.

%% The `acks' defaults (docs/protocol.md 13.2): the outbox bounds what a cut can cost
%% (frames and bytes not acknowledged, per session); an ack per 64 frames or 10 ms; user
%% commands beyond the outbox wait, at most max_pending_messages per connection, a send/2 caller at
%% most send_timeout ms.
acks_default(outbox_frames) -> 16384;
acks_default(outbox_bytes) -> 16 * 1024 * 1024;
acks_default(ack_every) -> 64;
acks_default(ack_delay) -> 10;
acks_default(max_pending_messages) -> 250000;
acks_default(send_timeout) -> 5000;
acks_default(max_confirms) -> 16384;
%% credit (docs/protocol.md 12, 13.2): the windows we grant the peer, when a mailbox is
%% "not keeping up", how grants are batched
acks_default(credit_window) -> 16384;
acks_default(credit_bytes) -> 16 * 1024 * 1024;
acks_default(credit_dest) -> 1024;
acks_default(mailbox_high) -> 1024;
acks_default(grant_every) -> 64;
acks_default(grant_delay) -> 10.

check(K, V) when K =:= allowed; K =:= force_system_names; K =:= routable_nodes ->
    (is_list(V) andalso lists:all(fun is_atom/1, V)) orelse bad(K, V);
check(K, V) when K =:= allow_legacy_auth; K =:= reconnect; K =:= compress; K =:= close_with_owner ->
    is_boolean(V) orelse bad(K, V);
check(K, V) when K =:= max_frame; K =:= max_handshake_frame; K =:= handshake_timeout;
                 K =:= session_timeout; K =:= acceptors; K =:= reconnect_min;
                 K =:= reconnect_max; K =:= connect_timeout; K =:= error_window;
                 K =:= max_proxies; K =:= max_exports; K =:= max_kept_sessions;
                 K =:= auth_failure_window; K =:= auth_block_time; K =:= max_terms;
                 K =:= max_connections; K =:= max_pending; K =:= max_pending_per_address;
                 K =:= outbox_frames; K =:= outbox_bytes; K =:= ack_every; K =:= ack_delay;
                 K =:= max_pending_messages; K =:= send_timeout; K =:= max_confirms;
                 K =:= credit_window; K =:= credit_bytes; K =:= credit_dest;
                 K =:= mailbox_high; K =:= grant_every; K =:= grant_delay;
                 K =:= route_heartbeat; K =:= route_grace; K =:= route_max_proxies ->
    (is_integer(V) andalso V > 0) orelse bad(K, V);
check(K, V) when K =:= max_new_atoms; K =:= max_server_atoms; K =:= heartbeat;
                 K =:= max_queue; K =:= max_errors; K =:= max_auth_failures ->
    (is_integer(V) andalso V >= 0) orelse bad(K, V);
check(features, V) ->
    (is_list(V) andalso lists:all(fun(F) -> lists:member(to_bin(F), ?ALL_FEATURES) end, V))
        orelse bad(features, V);
check(refuse_remote_exits, V) ->
    (is_boolean(V) orelse (is_list(V) andalso lists:all(fun is_atom/1, V)))
        orelse bad(refuse_remote_exits, V);
check(undelivered, V) ->
    (V =:= owner orelse V =:= none orelse is_pid(V) orelse is_function(V, 1))
        orelse bad(undelivered, V);
check(cluster, _) -> ok;   % with routing: check_combination/2
check(register_global, V) ->
    (is_boolean(V) orelse (is_list(V) andalso lists:all(fun is_atom/1, V)))
        orelse bad(register_global, V);
check(client_groups, V) ->
    (is_boolean(V) orelse (is_list(V) andalso
                           lists:all(fun(N) when is_atom(N) -> true;
                                        (N) when is_binary(N) -> byte_size(N) > 0 andalso byte_size(N) =< 255;
                                        (_) -> false
                                     end, V)))
        orelse bad(client_groups, V);
check(fallbacks, V) ->
    (is_list(V) andalso lists:all(fun({H, P}) -> (is_list(H) orelse is_binary(H) orelse is_tuple(H))
                                                     andalso is_integer(P) andalso P > 0 andalso P < 65536;
                                     (_) -> false
                                  end, V)) orelse bad(fallbacks, V);
check(routing, V) ->
    (is_boolean(V) orelse is_function(V, 2)) orelse bad(routing, V);
check(mode, V) -> lists:member(V, [extended, legacy]) orelse bad(mode, V);
check(node, V) -> (V =:= default orelse is_atom(V) orelse is_binary(V)) orelse bad(node, V);
check(ip, V) -> (is_tuple(V) andalso (tuple_size(V) =:= 4 orelse tuple_size(V) =:= 8)) orelse bad(ip, V);
check(tls, V) -> (V =:= false orelse is_list(V)) orelse bad(tls, V).

bad(K, V) -> throw({bad_option, {K, V}}).

%% Safe TLS defaults (README "Security"): TLS 1.2 and 1.3 only; a client verifies the server
%% (verify_peer, and a CA is then required); a server asking for client certificates
%% (verify_peer: mutual TLS) refuses clients without one. The host name check is added at
%% connect time (fabric_peer_transport), when the host is known.
-define(TLS_VERSIONS, ['tlsv1.2', 'tlsv1.3']).

tls(_, false) -> false;
tls(Role, Opts) ->
    lists:all(fun(O) -> is_tuple(O) andalso tuple_size(O) =:= 2 end, Opts)
        orelse bad(tls, not_a_proplist),
    Versions = proplists:get_value(versions, Opts, ?TLS_VERSIONS),
    (is_list(Versions) andalso Versions =/= [] andalso Versions -- ?TLS_VERSIONS =:= [])
        orelse bad(tls, {versions, Versions, "only 'tlsv1.2' and 'tlsv1.3' are allowed"}),
    HasCa = proplists:is_defined(cacertfile, Opts) orelse proplists:is_defined(cacerts, Opts),
    Default = case Role of client -> verify_peer; server -> verify_none end,
    Verify = proplists:get_value(verify, Opts, Default),
    lists:member(Verify, [verify_peer, verify_none]) orelse bad(tls, {verify, Verify}),
    (Verify =:= verify_none orelse HasCa)
        orelse bad(tls, {verify_peer, case Role of
                                          client -> "verifying the server (the default) needs "
                                                    "{cacertfile, File} or {cacerts, [Der]}; pass "
                                                    "{verify, verify_none} to connect without "
                                                    "verifying it (insecure)";
                                          server -> "verifying clients (mutual TLS) needs "
                                                    "{cacertfile, File} or {cacerts, [Der]}"
                                      end}),
    Extra = case {Role, Verify, proplists:is_defined(fail_if_no_peer_cert, Opts)} of
                {server, verify_peer, false} -> [{fail_if_no_peer_cert, true}];
                _ -> []
            end,
    Set = [{versions, Versions}, {verify, Verify} | Extra],
    Set ++ [O || {K, _} = O <- Opts, not lists:keymember(K, 1, Set)].

%% A legacy-only server authenticates every client with MD5: without allow_legacy_auth it
%% could serve nobody, so the combination is refused rather than silently useless.
check_combination(server, #{mode := legacy, allow_legacy_auth := false}) ->
    bad(mode, {legacy, requires_allow_legacy_auth});
check_combination(_, #{credit_dest := D, credit_window := W}) when D > W ->
    bad(credit_dest, {D, above, credit_window, W});
check_combination(server, #{cluster := _} = M) ->
    ok = fabric_peer_cluster:check(M),
    check_combination(any, maps:remove(cluster, M));
check_combination(_, #{features := F}) ->
    %% acks needs session (docs/protocol.md 11.1)
    Fs = [to_bin(X) || X <- F],
    (not lists:member(<<"acks">>, Fs) orelse lists:member(<<"session">>, Fs))
        orelse bad(features, {<<"acks">>, requires, <<"session">>}),
    ok.

%% credit needs acks (docs/protocol.md 11.1): without acks it is neither offered nor accepted.
features(Fs) ->
    case lists:member(<<"acks">>, Fs) of
        true -> Fs;
        false -> Fs -- [<<"credit">>]
    end.

to_bin(F) when is_atom(F) -> atom_to_binary(F, utf8);
to_bin(F) when is_binary(F) -> F;
to_bin(F) when is_list(F) -> unicode:characters_to_binary(F);
to_bin(F) -> F.

node_name(default) -> atom_to_binary(node(), utf8);
node_name(N) when is_atom(N) -> atom_to_binary(N, utf8);
node_name(N) when is_binary(N) -> N.

%% The secret is bytes; text is UTF-8.
secret(S) when is_binary(S) -> S;
secret(S) when is_list(S) ->
    case unicode:characters_to_binary(S) of
        B when is_binary(B) -> B;
        _ -> throw({bad_option, {secret, invalid}})
    end;
secret(S) when is_atom(S) -> throw({bad_option, {secret, S}});
secret(_) -> throw({bad_option, {secret, invalid}}).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

defaults_test() ->
    {ok, M} = normalize(server, "s", #{}),
    ?assertEqual(<<"s">>, maps:get(secret, M)),
    ?assertEqual([], maps:get(allowed, M)),
    ?assertEqual(false, maps:get(allow_legacy_auth, M)),
    ?assertEqual({127, 0, 0, 1}, maps:get(ip, M)).

utf8_secret_test() ->
    {ok, M} = normalize(client, [233], #{}),
    ?assertEqual(<<195, 169>>, maps:get(secret, M)).

bad_options_test_() ->
    [?_assertMatch({error, {bad_option, {unknown, [alowed]}}}, normalize(server, "s", #{alowed => [x]})),
     ?_assertMatch({error, {bad_option, {allowed, _}}}, normalize(server, "s", #{allowed => ["x"]})),
     ?_assertMatch({error, {bad_option, {features, _}}}, normalize(server, "s", #{features => [routes]})),
     ?_assertMatch({error, {bad_option, {routing, _}}}, normalize(server, "s", #{routing => yes})),
     ?_assertMatch({error, {bad_option, {unknown, [routing]}}}, normalize(client, "s", #{routing => true})),
     ?_assertMatch({error, {bad_option, {max_frame, _}}}, normalize(client, "s", #{max_frame => 0})),
     ?_assertMatch({error, {bad_option, {mode, {legacy, requires_allow_legacy_auth}}}},
                   normalize(server, "s", #{mode => legacy})),
     ?_assertMatch({ok, #{mode := legacy}},
                   normalize(server, "s", #{mode => legacy, allow_legacy_auth => true})),
     ?_assertMatch({error, {bad_option, {mode, _}}}, normalize(server, "s", #{mode => old})),
     ?_assertMatch({error, {bad_option, {mode, _}}}, normalize(client, "s", #{mode => old})),
     ?_assertMatch({error, {bad_option, _}}, normalize(server, 42, #{}))].

tls_defaults_test_() ->
    {ok, C} = normalize(client, "s", #{tls => [{cacertfile, "ca.pem"}]}),
    {ok, S} = normalize(server, "s", #{tls => [{certfile, "c"}, {keyfile, "k"}]}),
    {ok, M} = normalize(server, "s", #{tls => [{certfile, "c"}, {keyfile, "k"}, {verify, verify_peer},
                                               {cacertfile, "ca.pem"}]}),
    {ok, N} = normalize(client, "s", #{tls => [{verify, verify_none}]}),
    [?_assertEqual(['tlsv1.2', 'tlsv1.3'], proplists:get_value(versions, maps:get(tls, C))),
     ?_assertEqual(verify_peer, proplists:get_value(verify, maps:get(tls, C))),
     ?_assertEqual(verify_none, proplists:get_value(verify, maps:get(tls, S))),
     ?_assertEqual(true, proplists:get_value(fail_if_no_peer_cert, maps:get(tls, M))),
     ?_assertEqual(verify_none, proplists:get_value(verify, maps:get(tls, N))),
     ?_assertMatch({error, {bad_option, {tls, {verify_peer, _}}}}, normalize(client, "s", #{tls => []})),
     ?_assertMatch({error, {bad_option, {tls, {verify_peer, _}}}},
                   normalize(server, "s", #{tls => [{verify, verify_peer}]})),
     ?_assertMatch({error, {bad_option, {tls, {versions, ['tlsv1.1'], _}}}},
                   normalize(client, "s", #{tls => [{cacertfile, "x"}, {versions, ['tlsv1.1']}]})),
     ?_assertMatch({error, {bad_option, {tls, {versions, _, _}}}},
                   normalize(server, "s", #{tls => [{versions, ['tlsv1.3', tlsv1]}]}))].

features_as_atoms_test() ->
    {ok, M} = normalize(client, "s", #{features => [maps, <<"link">>]}),
    ?assertEqual([<<"maps">>, <<"link">>], maps:get(features, M)).
-endif.
