%% EUnit tests of fabric_peer_conn_batch: a burst of proxy messages taken from the mailbox
%% in one event, and the proxy's other messages keeping their place among them.
-module(fabric_peer_conn_batch_tests).

-include_lib("eunit/include/eunit.hrl").

-define(FEATS, [<<"whereis">>, <<"heartbeat">>, <<"error">>, <<"session">>, <<"link">>]).

proto() -> fabric_peer_proto_lib:proto(client, #{}, ?FEATS).

mailbox() -> receive M -> [M | mailbox()] after 0 -> [] end.

flush() -> _ = mailbox(), ok.

proxy() -> fabric_peer_proto_lib:fake(700001).

the_waiting_messages_of_proxies_are_taken_in_one_batch_test() ->
    flush(),
    Px = proxy(),
    self() ! {fabric_proxy_msg, Px, b},
    self() ! {fabric_proxy_msgs, Px, [c, d]},
    {_, Taken, _, Next} = fabric_peer_conn_batch:take({Px, [a]}, 1024, proto()),
    ?assertEqual({4, none}, {Taken, Next}),
    ?assertEqual([], mailbox()).

%% `P ! a, exit(P, R), P ! c': the exit signal ends the batch and is handled next, so c
%% cannot overtake it (it once did: the batch's receive skipped what it did not take)
a_proxy_exit_signal_ends_the_batch_in_its_place_test() ->
    flush(),
    Px = proxy(),
    Exit = {fabric_proxy_exit, Px, self(), between},
    self() ! Exit,
    self() ! {fabric_proxy_msg, Px, c},
    {_, Taken, _, Next} = fabric_peer_conn_batch:take({Px, [a]}, 1024, proto()),
    ?assertEqual({1, Exit}, {Taken, Next}),
    ?assertEqual([{fabric_proxy_msg, Px, c}], mailbox()).

every_other_message_of_a_proxy_keeps_its_place_test_() ->
    Px = proxy(),
    Others = [{fabric_proxy_send, Px, {self(), make_ref()}, m, infinity},
              {fabric_proxy_dropped, Px, m},
              {fabric_proxy_unsent, Px, [m]}],
    [?_test(begin
                flush(),
                self() ! Other,
                self() ! {fabric_proxy_msg, Px, later},
                {_, 1, _, Next} = fabric_peer_conn_batch:take({Px, [first]}, 1024, proto()),
                ?assertEqual(Other, Next),
                ?assertEqual([{fabric_proxy_msg, Px, later}], mailbox())
            end) || Other <- Others].

messages_of_others_are_left_where_they_are_test() ->
    flush(),
    Px = proxy(),
    self() ! {tcp, sock, <<"bytes">>},
    self() ! {fabric_proxy_msg, Px, b},
    {_, Taken, _, none} = fabric_peer_conn_batch:take({Px, [a]}, 1024, proto()),
    ?assertEqual(2, Taken),
    ?assertEqual([{tcp, sock, <<"bytes">>}], mailbox()).

a_full_batch_stops_taking_test() ->
    flush(),
    Px = proxy(),
    self() ! {fabric_proxy_msg, Px, c},
    {_, Taken, _, none} = fabric_peer_conn_batch:take({Px, [a, b]}, 2, proto()),
    ?assertEqual(2, Taken),
    ?assertEqual([{fabric_proxy_msg, Px, c}], mailbox()).
