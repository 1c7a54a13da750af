%% @doc The socket abstraction: one small module so TLS (`ssl') slots in next to plain TCP.
%%
%% A transport is `tcp' or `{tls, SslOpts}'. Sockets are binary, `nodelay', raw (no
%% `{packet, 4}' in the runtime) and read with `{active, once}' during the handshake and
%% `{active, N}' once established (`arm/2'): either way the socket stops reading while the
%% connection is behind (back-pressure). The connection process splits frames itself with
%% `fabric_peer_frame:take/2', which checks every 4-byte length against the limit of the
%% current state before buffering the body: with `{packet, 4}' and `packet_size' the
%% runtime would close the socket on an over-size header, leaving no way to send the
%% `frame_too_large' error frame the protocol asks for. `send/3' adds the 4-byte length.
%%
%% A third transport, `{relay, Pid}' with a reference for a socket, is a session resumed
%% through another server of a cluster (docs/cluster.md section 6): the socket lives at
%% that server, in the relay process `Pid' (`fabric_peer_cluster_relay'), which forwards its
%% bytes here as `{tcp, Ref, Data}' / `{tcp_closed, Ref}' and writes what it is sent.
-module(fabric_peer_transport).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([listen/3, accept/2, handshake/3, connect/5, send/3, send_many/3, activate/2, arm/2,
         controlling_process/3, close/2, peername/2, peer_ip/2, port/2, name/1, spoke/2,
         explain/3, write/3]).

-export_type([transport/0, socket/0]).

-type transport() :: tcp | {tls, [term()]} | {relay, pid()}.
-type socket() :: gen_tcp:socket() | term().

%% Output is bounded per connection: once more than ?HIGH_WATERMARK bytes wait in the
%% socket's queue (beyond what the kernel holds), a write blocks until the queue is under
%% ?LOW_WATERMARK; a write blocked for ?SEND_TIMEOUT ms means the peer stopped reading, and
%% the connection is closed (`send_timeout_close'), with a warning. A connection's output
%% memory is so at most the watermark plus the frame being written.
-define(SEND_TIMEOUT, 15000).
-define(HIGH_WATERMARK, 1048576).
-define(LOW_WATERMARK, 524288).
%% Size of the user-level receive buffer: each read message carries up to this
%% many bytes, so a 64 MiB frame arrives in ~1000 messages rather than ~50000.
-define(RECV_BUFFER, 65536).
%% Reads delivered as messages before an established TCP socket asks again (`arm/2'): a
%% `setopts' per ?ACTIVE_N reads instead of one per read (issue 15). Back-pressure stays:
%% at most ?ACTIVE_N x ?RECV_BUFFER bytes wait in the connection's mailbox, then the socket
%% is passive until the connection caught up, and the kernel's buffers push back on the peer.
-define(ACTIVE_N, 8).

base_opts(_Limit) ->
    [binary, {packet, raw}, {active, false}, {nodelay, true}, {buffer, ?RECV_BUFFER},
     {send_timeout, ?SEND_TIMEOUT}, {send_timeout_close, true},
     {high_watermark, ?HIGH_WATERMARK}, {low_watermark, ?LOW_WATERMARK}].

%% @doc Listen on `Ip':`Port' (0 = the OS picks).
-spec listen(transport(), inet:port_number(), #{ip := inet:ip_address(), limit := pos_integer()}) ->
          {ok, socket()} | {error, term()}.
listen(tcp, Port, #{ip := Ip, limit := Limit}) ->
    gen_tcp:listen(Port, [{ip, Ip}, {reuseaddr, true}, {backlog, 128} | base_opts(Limit)]);
listen({tls, SslOpts}, Port, #{ip := Ip, limit := Limit}) ->
    ssl:listen(Port, [{ip, Ip}, {reuseaddr, true} | base_opts(Limit)] ++ SslOpts).

%% @doc Accept one connection (for TLS the TLS handshake is done by `handshake/3').
-spec accept(transport(), socket()) -> {ok, socket()} | {error, term()}.
accept(tcp, L) -> gen_tcp:accept(L);
accept({tls, _}, L) -> ssl:transport_accept(L).

%% @doc Finish the transport-level handshake of an accepted socket (TLS only).
-spec handshake(transport(), socket(), timeout()) -> {ok, socket()} | {error, term()}.
handshake(tcp, S, _) -> {ok, S};
handshake({tls, _}, S, Timeout) -> ssl:handshake(S, Timeout).

%% @doc Connect to a server.
-spec connect(transport(), inet:hostname() | inet:ip_address(), inet:port_number(),
              pos_integer(), timeout()) -> {ok, socket()} | {error, term()}.
connect(tcp, Host, Port, Limit, Timeout) ->
    gen_tcp:connect(Host, Port, base_opts(Limit), Timeout);
connect({tls, SslOpts}, Host, Port, Limit, Timeout) ->
    ssl:connect(Host, Port, base_opts(Limit) ++ hostname_check(Host, SslOpts) ++ SslOpts, Timeout).

%% A verifying client checks the server's certificate against the host it connects to:
%% `server_name_indication' is the host (unless given), and for an IP address the
%% certificate must list that address as an IP subject alternative name (the default check
%% only compares DNS names).
hostname_check(Host, SslOpts) ->
    Verifying = proplists:get_value(verify, SslOpts) =:= verify_peer,
    case Verifying andalso not proplists:is_defined(server_name_indication, SslOpts) of
        false -> [];
        true ->
            case ip_address(Host) of
                {ok, Ip} ->
                    Custom = case proplists:is_defined(customize_hostname_check, SslOpts) of
                                 true -> [];
                                 false -> [{customize_hostname_check,
                                            [{match_fun, ip_san_match(Ip)}]}]
                             end,
                    [{server_name_indication, inet:ntoa(Ip)} | Custom];
                error when is_list(Host) -> [{server_name_indication, Host}];
                error when is_atom(Host) -> [{server_name_indication, atom_to_list(Host)}];
                error -> []
            end
    end.

ip_address(Host) when is_tuple(Host) -> {ok, Host};
ip_address(Host) when is_list(Host) ->
    case inet:parse_strict_address(Host) of
        {ok, Ip} -> {ok, Ip};
        {error, _} -> error
    end;
ip_address(_) -> error.

ip_san_match(Ip) ->
    Bytes = ip_bytes(Ip),
    fun(_Reference, {iPAddress, Presented}) -> iolist_to_binary(Presented) =:= Bytes;
       (_, _) -> default
    end.

ip_bytes({A, B, C, D}) -> <<A, B, C, D>>;
ip_bytes(Ip6) when tuple_size(Ip6) =:= 8 -> << <<W:16>> || W <- tuple_to_list(Ip6) >>.

%% @doc Send one frame (the 4-byte length is added by the socket).
-spec send(transport(), socket(), iodata()) -> ok | {error, term()}.
send(T, S, Data) -> write(T, S, [<<(iolist_size(Data)):32>>, Data]).

%% @doc Send several frames in one write, in order.
-spec send_many(transport(), socket(), [iodata()]) -> ok | {error, term()}.
send_many(T, S, Frames) -> write(T, S, [[<<(frame_size(F)):32>>, F] || F <- Frames]).

frame_size(F) when is_binary(F) -> byte_size(F);
frame_size(F) -> iolist_size(F).

%% @doc Write bytes as they are (the frames' lengths included).
-spec write(transport(), socket(), iodata()) -> ok | {error, term()}.
write({relay, Pid}, Ref, Frame) -> Pid ! {fabric_relay, Ref, {write, Frame}}, ok;
write(T, S, Frame) ->
    case case T of tcp -> gen_tcp:send(S, Frame); {tls, _} -> ssl:send(S, Frame) end of
        {error, timeout} = E ->
            ?LOG_WARNING(#{what => peer_not_reading, send_timeout_ms => ?SEND_TIMEOUT,
                           queued_over_bytes => ?HIGH_WATERMARK,
                           text => "the peer has not read its data: connection closed"},
                         ?FABRIC_LOG),
            E;
        Other -> Other
    end.

%% @doc Established: read on. A TCP or TLS socket is set `{active, ?ACTIVE_N}': up to that
%% many reads arrive as messages without a call per read, then `{tcp_passive, S}' (TLS:
%% `ssl_passive') says it stopped (`{ok, true}': call again only after that message). A
%% relay reads once (`{ok, false}': call again for the next read).
-spec arm(transport(), socket()) -> {ok, boolean()} | {error, term()}.
arm(tcp, S) -> active_n(inet:setopts(S, [{active, ?ACTIVE_N}]));
arm({tls, _}, S) -> active_n(ssl:setopts(S, [{active, ?ACTIVE_N}]));
arm(T, S) ->
    case activate(T, S) of
        ok -> {ok, false};
        E -> E
    end.

active_n(ok) -> {ok, true};
active_n(E) -> E.

%% @doc Ask for the next frame as a message.
-spec activate(transport(), socket()) -> ok | {error, term()}.
activate(tcp, S) -> inet:setopts(S, [{active, once}]);
activate({relay, Pid}, Ref) -> Pid ! {fabric_relay, Ref, activate}, ok;
activate({tls, _}, S) -> ssl:setopts(S, [{active, once}]).

%% @doc Hand the socket to another process.
-spec controlling_process(transport(), socket(), pid()) -> ok | {error, term()}.
controlling_process(tcp, S, Pid) -> gen_tcp:controlling_process(S, Pid);
controlling_process({tls, _}, S, Pid) -> ssl:controlling_process(S, Pid);
controlling_process({relay, _}, _, _) -> {error, relayed}.

%% @doc Close the socket.
-spec close(transport(), socket()) -> ok.
close(tcp, S) -> _ = gen_tcp:close(S), ok;
close({relay, Pid}, Ref) -> Pid ! {fabric_relay, Ref, close}, ok;
close({tls, _}, S) -> _ = ssl:close(S), ok.

%% @doc The peer address as text for logs.
-spec peername(transport(), socket()) -> binary().
peername(T, S) ->
    R = case T of tcp -> inet:peername(S); {tls, _} -> ssl:peername(S); {relay, _} -> relay end,
    case R of
        {ok, {Ip, Port}} -> iolist_to_binary([inet:ntoa(Ip), ":", integer_to_list(Port)]);
        _ -> <<"unknown">>
    end.

%% @doc The peer's IP address (for per-address throttling).
-spec peer_ip(transport(), socket()) -> {ok, inet:ip_address()} | error.
peer_ip(T, S) ->
    case case T of tcp -> inet:peername(S); {tls, _} -> ssl:peername(S); {relay, _} -> relay end of
        {ok, {Ip, _}} -> {ok, Ip};
        _ -> error
    end.

%% @doc Whether the runtime has read any byte of the peer from this socket (TLS records
%% included; bytes still in the kernel are not counted). Any process may ask.
-spec spoke(transport(), socket()) -> boolean().
spoke(tcp, S) -> received(fun() -> inet:getstat(S, [recv_oct]) end);
spoke({tls, _}, S) -> received(fun() -> ssl:getstat(S, [recv_oct]) end);
spoke({relay, _}, _) -> true.

%% (a socket closed meanwhile says nothing: it is ending anyway)
received(Stat) ->
    try Stat() of
        {ok, [{recv_oct, N}]} -> N > 0;
        _ -> false
    catch _:_ -> false
    end.

%% @doc The local port of a (listen) socket.
-spec port(transport(), socket()) -> {ok, inet:port_number()} | {error, term()}.
port(tcp, S) -> inet:port(S);
port({tls, _}, S) ->
    case ssl:sockname(S) of
        {ok, {_, P}} -> {ok, P};
        E -> E
    end.

%% @doc A client's connect or handshake failure, in words where the raw reason misleads:
%% `{tls, Text}' for a TLS failure whose cause is known, the reason as it is otherwise.
%% `Stage' is where it happened: `connecting' (TCP and TLS handshakes) or the client state
%% after them. A TLS 1.3 server checks the client's certificate after the client finished
%% its handshake, and the `certificate_required' alert it sends does not reach the client
%% (OTP reports `closed'): a TLS connection closed before the server's first fabric frame,
%% by a client that has no certificate, is that case.
-spec explain(transport(), connecting | atom(), term()) -> term().
explain({tls, _}, _, {tls_alert, {certificate_required, _}}) -> no_certificate();
%% `einval': what inet:setopts says of a socket the peer has already closed, which the TLS
%% layer can meet first under load; it means the same as `closed' here.
explain({tls, Opts}, await_challenge, Why) when Why =:= closed; Why =:= econnreset; Why =:= einval ->
    case lists:any(fun(K) -> proplists:is_defined(K, Opts) end, [certfile, cert, certs_keys]) of
        false -> no_certificate();
        true -> {tls, <<"the server closed the connection right after the TLS handshake: it "
                        "refused this client's certificate">>}
    end;
explain({tls, _}, _, {tls_alert, {Alert, Desc}}) ->
    {tls, iolist_to_binary(io_lib:format("TLS alert ~s: ~ts", [Alert, Desc]))};
explain({tls, _}, connecting, Why) when Why =:= closed; Why =:= econnreset; Why =:= einval ->
    {tls, <<"the server closed the connection during the TLS handshake: it does not speak TLS "
            "(connect without the tls option)">>};
explain(_, _, Why) -> Why.

no_certificate() ->
    {tls, <<"the server requires a client certificate: give one in the tls option "
            "({certfile, F} and {keyfile, F}, or {cert, Der} and {key, Key})">>}.

%% @doc `tcp' or `tls', for info maps.
-spec name(transport()) -> tcp | tls | relay.
name(tcp) -> tcp;
name({tls, _}) -> tls;
name({relay, _}) -> relay.
