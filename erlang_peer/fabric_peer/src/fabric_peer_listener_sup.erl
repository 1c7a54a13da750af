%% @doc One server: the keeper of its registry handle (`fabric_peer_server_handle'), its
%% connection supervisor, then its acceptors (which own the listening socket).
%% `rest_for_one': if the connection supervisor goes, the acceptors restart too; the handle
%% is recorded before anything runs and forgotten after everything stopped.
%% This process also owns the server's table of pending connections (`fabric_peer_admission'),
%% which so lives exactly as long as the server.
-module(fabric_peer_listener_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).
%% started by a child spec (fabric_peer_servers_sup, or fabric_peer:start_server_link/3)
-ignore_xref([start_link/1]).

%% @doc Start a server from its settings map (see `fabric_peer_opts').
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Ctx) -> supervisor:start_link(?MODULE, Ctx).

%% @doc Supervisor callback.
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Ctx0) ->
    Ctx = Ctx0#{admission => fabric_peer_admission:new_table()},
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => handle, start => {fabric_peer_server_handle, start_link, [Ctx]},
             shutdown => 5000}]
         %% a clustered server's directory process (docs/cluster.md)
         ++ fabric_peer_cluster:child_specs(Ctx) ++
          [#{id => conn_sup, start => {fabric_peer_conn_sup, start_link, [Ctx]},
             type => supervisor, shutdown => infinity},
           #{id => acceptors_sup, start => {fabric_peer_acceptors_sup, start_link, [Ctx]},
             type => supervisor, shutdown => infinity}]}}.
