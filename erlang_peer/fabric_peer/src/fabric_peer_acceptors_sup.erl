%% @doc Owns a server's listening socket and supervises its acceptors. The socket is opened
%% here (not in an acceptor) so that a crashed acceptor never closes it; the real port is
%% recorded in the registry, and a restart reopens the same port.
-module(fabric_peer_acceptors_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).
% started by its child spec
-ignore_xref([start_link/1]).

%% @doc Open the listening socket and start the acceptors.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Ctx) -> supervisor:start_link(?MODULE, Ctx).

%% @doc Supervisor callback.
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(#{ref := Ref, port := Port0, ip := Ip, max_handshake_frame := Limit,
       transport := T, acceptors := N} = Ctx) ->
    Port = case fabric_peer_registry:port(Ref) of
               undefined -> Port0;
               P -> P
           end,
    case fabric_peer_transport:listen(T, Port, #{ip => Ip, limit => Limit}) of
        {ok, LSock} ->
            {ok, Real} = fabric_peer_transport:port(T, LSock),
            ok = fabric_peer_registry:set_port(Ref, Real),
            Children = [#{id => {acceptor, I},
                          start => {fabric_peer_acceptor, start_link, [Ctx, LSock]},
                          shutdown => brutal_kill}
                        || I <- lists:seq(1, N)],
            {ok, {#{strategy => one_for_one, intensity => 10, period => 1}, Children}};
        {error, Reason} ->
            exit({listen_failed, Reason})
    end.
