%% @doc A session resumed through another server of a cluster (docs/cluster.md section 6):
%% a client whose session lives at server A (A alive) reconnected to server B. B
%% authenticated it and A's session owner claimed the session for it (the "ends that
%% connection first" of docs/protocol.md 11.5, over distribution); the socket stays at B,
%% in this process, and A's owner uses it as its transport `{relay, ThisPid}': what the
%% client sends is forwarded to the owner as `{tcp, Ref, Data}' (one message per read, read
%% only when the owner asks: `activate', so the owner's back pressure reaches the client's
%% TCP as with a socket of its own), and what the owner writes is written here.
%%
%% The relay ends when the socket closes (the owner gets `{tcp_closed, Ref}' and keeps its
%% session for a resume, as for any lost connection), when the owner closes it, or when
%% the owner ends (its node down included: the client then reconnects and gets a new
%% session wherever it lands).
-module(fabric_peer_cluster_relay).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").

-export([start/6, close/1]).

%% @doc Start a relay for the authenticated socket `S' (transport `T', owned by the
%% caller, handed over here) to the session owner `Owner' at another node; tell the owner
%% to attach (`{attach, {relay, Relay}, Ref, Peer, Params}'). `ok', or `{error, Why}' (the
%% socket is closed then).
%% `O': the settings of this server (the relay is linked to its cluster process: it ends
%% with the server, and `fabric_peer:drain_server/1' closes it).
-spec start(fabric_peer_transport:transport(), term(), pid(), binary(), map(), map()) ->
          ok | {error, term()}.
start(T, S, Owner, Peer, Params, O) ->
    Ref = make_ref(),
    Relay = spawn(fun() -> init(T, S, Owner, Ref, O) end),
    case fabric_peer_transport:controlling_process(T, S, Relay) of
        ok ->
            Relay ! {fabric_relay, Ref, go},
            gen_statem:cast(Owner, {attach, {relay, Relay}, Ref, Peer, Params}),
            ok;
        {error, _} = E ->
            exit(Relay, kill),
            fabric_peer_transport:close(T, S),
            E
    end.

%% @doc Close a relay (the client reconnects: `drain_server/1').
-spec close(pid()) -> ok.
close(Relay) -> Relay ! fabric_relay_drain, ok.

init(T, S, Owner, Ref, O) ->
    logger:update_process_metadata(?FABRIC_LOG),
    process_flag(trap_exit, true),
    ok = fabric_peer_cluster:relay(O),
    Mon = erlang:monitor(process, Owner),
    receive
        {fabric_relay, Ref, go} -> loop(T, S, Owner, Ref, Mon)
    after 5000 -> fabric_peer_transport:close(T, S)
    end.

loop(T, S, Owner, Ref, Mon) ->
    receive
        {fabric_relay, Ref, {write, Bytes}} ->
            case fabric_peer_transport:write(T, S, Bytes) of
                ok -> loop(T, S, Owner, Ref, Mon);
                {error, Why} -> gone(T, S, Owner, Ref, Why)
            end;
        {fabric_relay, Ref, activate} ->
            case fabric_peer_transport:activate(T, S) of
                ok -> loop(T, S, Owner, Ref, Mon);
                {error, Why} -> gone(T, S, Owner, Ref, Why)
            end;
        {fabric_relay, Ref, close} ->
            fabric_peer_transport:close(T, S);
        {Tag, S, Data} when Tag =:= tcp; Tag =:= ssl ->
            Owner ! {tcp, Ref, Data},
            loop(T, S, Owner, Ref, Mon);
        {Tag, S} when Tag =:= tcp_closed; Tag =:= ssl_closed ->
            Owner ! {tcp_closed, Ref};
        {Tag, S, Why} when Tag =:= tcp_error; Tag =:= ssl_error ->
            gone(T, S, Owner, Ref, Why);
        fabric_relay_drain ->
            gone(T, S, Owner, Ref, drained);
        {'EXIT', _, Why} ->
            %% our server stops
            gone(T, S, Owner, Ref, Why);
        {'DOWN', Mon, process, Owner, Why} ->
            ?LOG_INFO(#{what => relayed_session_ended, reason => Why,
                        text => "the session owner at the other server ended: the client's "
                                "connection closes"}, ?FABRIC_LOG),
            fabric_peer_transport:close(T, S);
        _ -> loop(T, S, Owner, Ref, Mon)
    end.

gone(T, S, Owner, Ref, Why) ->
    fabric_peer_transport:close(T, S),
    Owner ! {tcp_error, Ref, Why},
    ok.
