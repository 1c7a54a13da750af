%% EUnit tests of fabric_peer_transport:explain/3: the socket errors of a failed connect read
%% as what went wrong, whichever form the TLS layer reports a peer's close in.
-module(fabric_peer_transport_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NOT_TLS, <<"the server closed the connection during the TLS handshake: it does not "
                   "speak TLS (connect without the tls option)">>).

a_plain_server_closing_the_tls_handshake_reads_the_same_in_every_form_test() ->
    [?assertEqual({tls, ?NOT_TLS}, fabric_peer_transport:explain({tls, []}, connecting, Why))
     || Why <- [closed, econnreset, einval]].

a_close_after_the_handshake_without_a_certificate_asks_for_one_test() ->
    [begin
         {tls, Msg} = fabric_peer_transport:explain({tls, []}, await_challenge, Why),
         ?assertMatch({_, _}, binary:match(Msg, <<"requires a client certificate">>))
     end || Why <- [closed, econnreset, einval]].

a_close_after_the_handshake_with_a_certificate_says_it_was_refused_test() ->
    {tls, Msg} = fabric_peer_transport:explain({tls, [{certfile, "c.pem"}]}, await_challenge, einval),
    ?assertMatch({_, _}, binary:match(Msg, <<"refused this client's certificate">>)).

plain_tcp_errors_are_kept_as_they_are_test() ->
    [?assertEqual(Why, fabric_peer_transport:explain(tcp, connecting, Why))
     || Why <- [closed, econnrefused, einval, timeout]].
