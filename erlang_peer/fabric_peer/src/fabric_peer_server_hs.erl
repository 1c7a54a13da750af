%% @doc The server's side of the handshake (docs/protocol.md 2-3) as pure steps: each takes
%% the frame received and returns the frame to write and what comes next. The lifecycle
%% (`fabric_peer_server') writes the frames, looks up a session to resume and keeps the
%% throttle; the random material (nonce, legacy challenge, session id) is passed in.
%%
%% Legacy: hello -> `{challenge, C}' -> `{response, R}' -> `{auth, success | failed}'.
%% Extended: hello (with a nonce) -> `{challenge, Nonce, Offer}' ->
%% `{response, Mac, AcceptBin}' -> `{auth, success, Mac, InfoBin}'.
-module(fabric_peer_server_hs).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([hello/3, response/4, success/5, refused/3, failure/0]).

-export_type([hs/0]).

-type hs() :: #{kind := legacy | extended, atom() => term()}.

%% @doc The client's first frame. `Rand': `nonce' (32 random bytes) and `challenge'
%% (`fabric_peer_handshake:legacy_challenge/0'). A legacy-only server (`mode => legacy')
%% answers every hello like the original, ignoring an extended hello's name.
-spec hello(binary(), map(), #{nonce := <<_:256>>, challenge := string()}) ->
          {send, binary(), hs()} | {refuse, string()}.
hello(F1, O, #{nonce := Nonce, challenge := C}) ->
    case decode(F1, O) of
        {ok, Term} ->
            case fabric_peer_handshake:parse_hello(Term) of
                {extended, _, _} when map_get(mode, O) =:= legacy -> legacy_challenge(C);
                {extended, V, _ClientNonce} -> extended_challenge(F1, V, Nonce, O);
                legacy -> legacy_challenge(C);
                {error, bad_hello} -> {refuse, "first frame is not a hello"}
            end;
        error -> {refuse, "first frame is not a valid term"}
    end.

legacy_challenge(C) ->
    {send, fabric_peer_handshake:encode({challenge, C}), #{kind => legacy, challenge => C}}.

extended_challenge(F1, ClientVersion, Nonce, O) ->
    Version = min(ClientVersion, fabric_peer_handshake:version()),
    Offer = fabric_peer_handshake:offer(#{version => Version, features => maps:get(features, O),
                                          node => maps:get(node, O),
                                          max_frame => maps:get(max_frame, O),
                                          heartbeat => maps:get(heartbeat, O),
                                          credit => fabric_peer_flowctl:windows(O),
                                          route_heartbeat => maps:get(route_heartbeat, O, 1000)}),
    F2 = fabric_peer_handshake:encode({challenge, Nonce, Offer}),
    {send, F2, #{kind => extended, f1 => F1, f2 => F2, version => Version}}.

%% @doc The client's response. `legacy': authenticated, write the frame; `extended':
%% authenticated, with the connection's parameters and the session the client asks to
%% resume (finish with `success/5'); `failed': write `failure/0' and close. `Peer' names
%% the client in the logs.
-spec response(binary(), hs(), map(), binary()) ->
          {legacy, binary()} | {extended, map(), binary() | undefined} | failed.
response(F3, Hs, O, Peer) ->
    Term = case decode(F3, O) of {ok, T} -> T; error -> bad_frame end,
    response(Term, F3, Hs, O, Peer).

response({response, R}, _, #{kind := legacy, challenge := C}, O, Peer) ->
    case maps:get(allow_legacy_auth, O) of
        false ->
            ?LOG_WARNING(#{what => legacy_client_refused, peer => Peer,
                           text => "MD5 authentication is disabled (allow_legacy_auth)"},
                         ?FABRIC_LOG),
            failed;
        true ->
            case fabric_peer_handshake:check_legacy_response(C, maps:get(secret, O), R) of
                true -> {legacy, fabric_peer_handshake:encode({auth, success})};
                false ->
                    ?LOG_WARNING(#{what => auth_failed, peer => Peer, mode => legacy}, ?FABRIC_LOG),
                    failed
            end
    end;
response({response, Mac, AcceptBin}, _, #{kind := extended, f1 := F1, f2 := F2} = Hs, O, Peer)
  when is_binary(AcceptBin) ->
    Expected = fabric_peer_handshake:client_mac(maps:get(secret, O), F1, F2, AcceptBin),
    Accept = case fabric_peer_handshake:check_mac(Expected, Mac) of
                 true ->
                     case decode(AcceptBin, O) of
                         {ok, A} -> fabric_peer_handshake:parse_accept(A, maps:get(features, O));
                         error -> {error, bad_accept}
                     end;
                 false -> {error, bad_mac}
             end,
    case route_rules(Accept, O) of
        {ok, #{features := Feats} = Acc} ->
            Params = #{mode => extended, features => Feats, version => maps:get(version, Hs),
                       peer_node => maps:get(node, Acc), peer_max => maps:get(max_frame, Acc),
                       peer_hb => maps:get(heartbeat, Acc),
                       peer_received => maps:get(received, Acc),
                       peer_credit => maps:get(credit, Acc)},
            Resume = case maps:get(resume, Acc) of
                         Sid when is_binary(Sid) -> Sid;
                         _ -> undefined
                     end,
            {extended, Params, Resume};
        {error, Why} ->
            ?LOG_WARNING(#{what => auth_failed, peer => Peer, mode => extended, reason => Why},
                         ?FABRIC_LOG),
            failed
    end;
response(_, _, _, _, Peer) ->
    ?LOG_WARNING(#{what => bad_handshake_response, peer => Peer}, ?FABRIC_LOG),
    failed.

%% @doc The last extended frame: the session id (`undefined' without the session feature)
%% and whether it was resumed, proven with the server MAC over the whole handshake.
%% `Resumed' may carry the extra `Info' keys of the `acks' feature: `{true, #{received =>
%% N}}' or `{false, #{resume_refused => Why}}' (docs/protocol.md 11.1).
-spec success(binary() | undefined, boolean() | {boolean(), map()}, binary(), hs(), map()) -> binary().
success(Sid, Resumed, F3, Hs, O) when is_boolean(Resumed) -> success(Sid, {Resumed, #{}}, F3, Hs, O);
success(Sid, {Resumed, Extra}, F3, #{kind := extended, f1 := F1, f2 := F2}, O) ->
    InfoBin = term_to_binary(fabric_peer_handshake:info(Extra#{session => Sid, resumed => Resumed})),
    Mac = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    fabric_peer_handshake:encode({auth, success, Mac, InfoBin}).

%% @doc The last frame for a client whose node name is in use (16.1): authenticated, but
%% refused; no session.
-spec refused(binary(), hs(), map()) -> binary().
refused(F3, #{kind := extended, f1 := F1, f2 := F2}, O) ->
    InfoBin = term_to_binary(#{<<"resumed">> => false, <<"refused">> => <<"node_in_use">>}),
    Mac = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    fabric_peer_handshake:encode({auth, success, Mac, InfoBin}).

%% An Accept with `route' must agree on `heartbeat' too, with an interval between 1 and
%% our `route_heartbeat' (16.1).
route_rules({ok, #{features := Feats, heartbeat := H, node := N}} = A, O) ->
    case lists:member(<<"route">>, Feats) of
        false -> A;
        true ->
            case lists:member(<<"heartbeat">>, Feats) andalso H >= 1
                andalso H =< maps:get(route_heartbeat, O, 1000) of
                true ->
                    case fabric_peer_route:node_name(N) of
                        true -> A;
                        false -> {error, bad_node_name}
                    end;
                false -> {error, route_without_heartbeat}
            end
    end;
route_rules(Other, _) -> Other.

%% @doc The frame that refuses a client (both modes).
-spec failure() -> binary().
failure() -> fabric_peer_handshake:encode({auth, failed}).

%% Handshake frames never create atoms.
decode(Bin, O) ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0,
                                       max_decompressed => maps:get(max_handshake_frame, O)}) of
        {ok, T, _} -> {ok, T};
        {error, _} -> error
    end.
