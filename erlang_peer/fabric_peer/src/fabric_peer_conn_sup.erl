%% @doc The connections of one server (`fabric_peer_server' processes).
-module(fabric_peer_conn_sup).
-behaviour(supervisor).

-export([start_link/1, init/1, start_conn/2]).
% started by its child spec
-ignore_xref([start_link/1]).

%% @doc Start the connection supervisor and record it in the server's registry entry.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Ctx) -> supervisor:start_link(?MODULE, Ctx).

%% @doc Start a connection process for an accepted socket.
-spec start_conn(pid(), term()) -> {ok, pid()} | {error, term()}.
start_conn(Sup, Socket) -> supervisor:start_child(Sup, [Socket]).

%% @doc Supervisor callback.
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(#{ref := Ref} = Ctx) ->
    ok = fabric_peer_registry:set_conn_sup(Ref, self()),
    %% Connections are temporary: a crashed connection is gone, never restarted with a
    %% stale socket; a high intensity keeps one bad client from taking the server down.
    {ok, {#{strategy => simple_one_for_one, intensity => 1000, period => 1},
          [#{id => conn, start => {fabric_peer_server, start_link, [Ctx]},
             restart => temporary, shutdown => 5000}]}}.
