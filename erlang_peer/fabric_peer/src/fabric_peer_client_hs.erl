%% @doc The client's side of the handshake (docs/protocol.md 2-3) as pure steps: each takes
%% the frame received and returns the frame to write, or the outcome. The lifecycle
%% (`fabric_peer_client') writes the frames; the nonce is passed in.
-module(fabric_peer_client_hs).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([hello/2, challenge/5, auth/4]).

-export_type([hs/0]).

-type hs() :: #{kind := legacy | extended, atom() => term()}.

%% @doc The first frame, in the mode of the settings (`Nonce': 32 random bytes, used by the
%% extended hello).
-spec hello(map(), <<_:256>>) -> {binary(), hs()}.
hello(O, Nonce) ->
    {Hello, Hs} = case maps:get(mode, O) of
                      extended -> {fabric_peer_handshake:extended_hello(Nonce), #{kind => extended}};
                      legacy -> {fabric_peer_handshake:legacy_hello(), #{kind => legacy}}
                  end,
    F1 = fabric_peer_handshake:encode(Hello),
    {F1, Hs#{f1 => F1}}.

%% @doc The server's challenge. `Session': the session to ask to resume (or `undefined'),
%% with `acks' as `{Sid, Received}' (the count of the server's frames we handled).
%% `Peer' names the server in the logs.
-spec challenge(binary(), hs(), binary() | {binary(), non_neg_integer()} | undefined, map(),
                binary()) ->
          {send, binary(), hs()} | {fail, {auth_failed, atom()}}.
challenge(F2, Hs, Session, O, Peer) ->
    case decode(F2, O) of
        {ok, Term} -> challenge(Term, F2, Hs, Session, O, Peer);
        error -> {fail, {auth_failed, bad_challenge}}
    end.

challenge({challenge, C}, _, Hs, _, O, Peer) ->
    case {maps:get(allow_legacy_auth, O), fabric_peer_handshake:parse_legacy_challenge(C)} of
        {false, _} ->
            ?LOG_ERROR(#{what => legacy_server_refused, peer => Peer,
                         text => "the server is an original (MD5-only) fabric peer and legacy "
                                 "authentication is disabled; pass allow_legacy_auth => true "
                                 "to allow MD5 authentication"}, ?FABRIC_LOG),
            {fail, {auth_failed, legacy_server}};
        {true, {ok, Ch}} ->
            R = fabric_peer_handshake:legacy_response(Ch, maps:get(secret, O)),
            {send, fabric_peer_handshake:encode({response, R}), Hs#{kind => legacy}};
        {true, error} -> {fail, {auth_failed, bad_challenge}}
    end;
challenge({challenge, Nonce, Offer0}, F2, #{kind := extended, f1 := F1} = Hs, Session, O, _)
  when is_binary(Nonce), byte_size(Nonce) =:= 32 ->
    case fabric_peer_handshake:parse_offer(Offer0) of
        {ok, Offer} ->
            Feats0 = [F || F <- maps:get(features, O), lists:member(F, maps:get(features, Offer))],
            %% acks only with session (docs/protocol.md 11.1)
            Feats1 = case lists:member(<<"session">>, Feats0) of
                         true -> Feats0;
                         false -> Feats0 -- [<<"acks">>]
                     end,
            %% credit only with acks (12)
            Feats2 = case lists:member(<<"acks">>, Feats1) of
                         true -> Feats1;
                         false -> Feats1 -- [<<"credit">>]
                     end,
            %% route only with heartbeat, announcing at most route_heartbeat (16.1)
            {Feats, Hb} = route_terms(Feats2, maps:get(heartbeat, O),
                                      maps:get(route_heartbeat, Offer)),
            {Sid, Received} = case Session of
                                  {S, N} -> {S, N};
                                  S -> {S, undefined}
                              end,
            Resume = case lists:member(<<"session">>, Feats) of
                         true -> Sid;
                         false -> undefined
                     end,
            Rc = case lists:member(<<"acks">>, Feats) of
                     true -> Received;
                     false -> undefined
                 end,
            Accept = fabric_peer_handshake:accept(#{features => Feats, node => maps:get(node, O),
                                                    max_frame => maps:get(max_frame, O),
                                                    heartbeat => Hb,
                                                    resume => Resume, received => Rc,
                                                    credit => fabric_peer_flowctl:windows(O)}),
            AcceptBin = term_to_binary(Accept),
            Mac = fabric_peer_handshake:client_mac(maps:get(secret, O), F1, F2, AcceptBin),
            F3 = fabric_peer_handshake:encode({response, Mac, AcceptBin}),
            {send, F3, Hs#{f2 => F2, f3 => F3, offer => Offer, features => Feats, heartbeat => Hb}};
        {error, _} -> {fail, {auth_failed, bad_offer}}
    end;
challenge(_, _, _, _, _, _) ->
    {fail, {auth_failed, bad_challenge}}.

%% The features and heartbeat we accept: `route' needs `heartbeat' and the server's
%% `route_heartbeat', and our interval is lowered to it (our own interval 0 takes it).
route_terms(Feats, Hb, RH) ->
    case lists:member(<<"route">>, Feats) of
        false -> {Feats, Hb};
        true when is_integer(RH) ->
            case lists:member(<<"heartbeat">>, Feats) of
                true when Hb =:= 0 -> {Feats, RH};
                true -> {Feats, min(Hb, RH)};
                false -> {Feats -- [<<"route">>], Hb}
            end;
        true -> {Feats -- [<<"route">>], Hb}
    end.

%% @doc The server's verdict: established with the connection's parameters (and whether
%% the session was resumed), or why not.
-spec auth(binary(), hs(), map(), binary()) ->
          {established, map(), boolean()} | {fail, {auth_failed, atom()} | {node_in_use, atom()}}.
auth(F4, Hs, O, Peer) ->
    case decode(F4, O) of
        {ok, Term} -> auth_term(Term, Hs, O, Peer);
        error -> {fail, {auth_failed, bad_auth_frame}}
    end.

auth_term({auth, success}, #{kind := legacy}, _, _) ->
    {established, #{mode => legacy}, false};
auth_term({auth, success, Mac, InfoBin}, #{kind := extended} = Hs, O, Peer) when is_binary(InfoBin) ->
    #{f1 := F1, f2 := F2, f3 := F3, offer := Offer, features := Feats} = Hs,
    Expected = fabric_peer_handshake:server_mac(maps:get(secret, O), F1, F2, F3, InfoBin),
    case fabric_peer_handshake:check_mac(Expected, Mac) of
        false ->
            ?LOG_ERROR(#{what => server_not_authenticated, peer => Peer,
                         text => "the server could not prove it knows the secret"}, ?FABRIC_LOG),
            {fail, {auth_failed, server_not_authenticated}};
        true ->
            case decode(InfoBin, O) of
                {ok, I} ->
                    case fabric_peer_handshake:parse_info(I) of
                        {ok, #{refused := <<"node_in_use">>}} ->
                            Node = maps:get(node, O),
                            ?LOG_WARNING(#{what => node_in_use, peer => Peer, node => Node,
                                           text => "the server refused our node name: another "
                                                   "client holds it"}, ?FABRIC_LOG),
                            {fail, {node_in_use, binary_to_atom(Node, utf8)}};
                        {ok, #{session := Sid, resumed := Resumed} = Info} ->
                            {established, #{mode => extended, features => Feats,
                                            version => maps:get(version, Offer),
                                            peer_node => maps:get(node, Offer),
                                            peer_max => maps:get(max_frame, Offer),
                                            peer_hb => maps:get(heartbeat, Offer),
                                            own_heartbeat => maps:get(heartbeat, Hs),
                                            session => Sid,
                                            peer_received => maps:get(received, Info),
                                            peer_credit => maps:get(credit, Offer),
                                            resume_refused => maps:get(resume_refused, Info)},
                             Resumed};
                        {error, _} -> {fail, {auth_failed, bad_info}}
                    end;
                error -> {fail, {auth_failed, bad_info}}
            end
    end;
auth_term({auth, failed}, _, _, _) ->
    {fail, {auth_failed, refused_by_server}};
auth_term(_, _, _, _) ->
    {fail, {auth_failed, bad_auth_frame}}.

%% Handshake frames never create atoms.
decode(Bin, O) ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0,
                                       max_decompressed => maps:get(max_handshake_frame, O)}) of
        {ok, T, _} -> {ok, T};
        {error, _} -> error
    end.
