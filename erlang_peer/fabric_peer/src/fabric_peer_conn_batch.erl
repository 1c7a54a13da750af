%% @doc A burst of `Proxy ! Msg' in the connection process: the proxies' messages already
%% waiting in its mailbox are taken in one event, so their frames go out in one socket
%% write. Each write waits for its reply with a receive that scans the whole mailbox, so
%% one write per message would make a burst quadratic (issue 12: 200k messages at 1.5k
%% msgs/s).
%%
%% Order: everything a proxy tells its connection is matched by one receive, oldest first,
%% so a proxy's later message never overtakes its earlier `send/2', exit signal, drop
%% report or barrier answer (fabric_peer_dead_order): `P ! a, exit(P, R), P ! c' from one
%% process is a, the exit2, c. Such a message ends the batch and is handled next, as the
%% event it would have been.
-module(fabric_peer_conn_batch).

-export([take/3]).

%% @doc Carry out `Proxy''s messages `Msgs', then those waiting in the mailbox (at most
%% `Max' in all): the actions, how many were taken, the protocol state and the proxy's
%% message that ended the batch (`none' when none did).
-spec take({pid(), [term()]}, pos_integer(), fabric_peer_protocol:proto()) ->
          {[term()], non_neg_integer(), fabric_peer_protocol:proto(), none | tuple()}.
take({Proxy, Msgs}, Max, P) -> take(Proxy, Msgs, P, Max, Max, []).

take(Proxy, Msgs, P, Max, N, Acc) ->
    {N1, Acc1, P1} = msgs(Proxy, Msgs, P, N, Acc),
    case N1 > 0 andalso next() of
        {Proxy2, Msgs2} -> take(Proxy2, Msgs2, P1, Max, N1, Acc1);
        Next -> {lists:append(lists:reverse(Acc1)), Max - N1, P1, next_or_none(Next)}
    end.

next_or_none(false) -> none;
next_or_none(Next) -> Next.

msgs(_, [], P, N, Acc) -> {N, Acc, P};
msgs(Proxy, [Msg | T], P, N, Acc) ->
    {Acts, P1} = fabric_peer_protocol:proxy_msg(Proxy, Msg, P),
    msgs(Proxy, T, P1, N - 1, [Acts | Acc]).

%% (a proxy forwards the messages that waited in it as one list, fabric_peer_proxy)
next() ->
    receive
        {fabric_proxy_msg, Proxy, Msg} -> {Proxy, [Msg]};
        {fabric_proxy_msgs, Proxy, Msgs} -> {Proxy, Msgs};
        {fabric_proxy_send, _, _, _, _} = Other -> Other;
        {fabric_proxy_exit, _, _, _} = Other -> Other;
        {fabric_proxy_dropped, _, _} = Other -> Other;
        {fabric_proxy_unsent, _, _} = Other -> Other;
        {fabric_proxy_barrier, _, _} = Other -> Other
    after 0 -> none
    end.
