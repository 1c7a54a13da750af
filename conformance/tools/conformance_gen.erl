%% The Erlang side's part of recording handshake transcripts (conformance/tools/generate.py
%% compiles and runs it): each operation builds one frame with the pure functions of
%% fabric_peer_handshake, composed as the Erlang peer's connection composes them.
%% Input and output are hex-encoded external terms on the command line and stdout.
-module(conformance_gen).
-export([main/1]).

main(Hex) ->
    Args = binary_to_term(binary:decode_hex(list_to_binary(Hex))),
    Out = op(Args),
    io:format("~s~n", [binary:encode_hex(term_to_binary(Out))]).

%% F1: the extended hello for the client nonce.
op(#{op := hello, client_nonce := N}) ->
    fabric_peer_handshake:encode(fabric_peer_handshake:extended_hello(N));
%% F2: the server's challenge, from the client's hello.
op(#{op := challenge, f1 := F1, server_nonce := N, features := F, node := Node,
     max_frame := M, heartbeat := H}) ->
    {extended, ClientVersion, _} = fabric_peer_handshake:parse_hello(binary_to_term(F1)),
    Offer = fabric_peer_handshake:offer(#{version => min(ClientVersion, fabric_peer_handshake:version()),
                                          features => F, node => Node, max_frame => M,
                                          heartbeat => H}),
    fabric_peer_handshake:encode({challenge, N, Offer});
%% F3: the client's response to the challenge.
op(#{op := response, secret := S, f1 := F1, f2 := F2, features := Mine, node := Node,
     max_frame := M, heartbeat := H, resume := Resume0}) ->
    {challenge, _, Offer0} = binary_to_term(F2),
    {ok, Offer} = fabric_peer_handshake:parse_offer(Offer0),
    Feats = [F || F <- Mine, lists:member(F, maps:get(features, Offer))],
    Resume = case lists:member(<<"session">>, Feats) of
                 true -> Resume0;
                 false -> undefined
             end,
    Accept = fabric_peer_handshake:accept(#{features => Feats, node => Node, max_frame => M,
                                            heartbeat => H, resume => Resume}),
    AcceptBin = term_to_binary(Accept),
    Mac = fabric_peer_handshake:client_mac(S, F1, F2, AcceptBin),
    fabric_peer_handshake:encode({response, Mac, AcceptBin});
%% F4: the server's answer to the response.
op(#{op := auth, secret := S, f1 := F1, f2 := F2, f3 := F3, features := Offered,
     session_id := NewSid, kept_session := Kept}) ->
    {response, Mac, AcceptBin} = binary_to_term(F3),
    Expected = fabric_peer_handshake:client_mac(S, F1, F2, AcceptBin),
    case fabric_peer_handshake:check_mac(Expected, Mac) andalso
         fabric_peer_handshake:parse_accept(binary_to_term(AcceptBin), Offered) of
        {ok, #{features := Feats, resume := Resume}} ->
            {Sid, Resumed} = case lists:member(<<"session">>, Feats) of
                                 true when Resume =/= undefined, Resume =:= Kept -> {Resume, true};
                                 true -> {NewSid, false};
                                 false -> {undefined, false}
                             end,
            InfoBin = term_to_binary(fabric_peer_handshake:info(#{session => Sid, resumed => Resumed})),
            ServerMac = fabric_peer_handshake:server_mac(S, F1, F2, F3, InfoBin),
            fabric_peer_handshake:encode({auth, success, ServerMac, InfoBin});
        _ ->
            fabric_peer_handshake:encode({auth, failed})
    end.
