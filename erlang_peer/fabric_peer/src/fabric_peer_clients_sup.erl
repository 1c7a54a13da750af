%% @doc One child per client connection started with `fabric_peer:connect/4'
%% (a `fabric_peer_client' process).
-module(fabric_peer_clients_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).
% started by its child spec
-ignore_xref([start_link/0]).

%% @doc Start the clients supervisor.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Supervisor callback.
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => simple_one_for_one, intensity => 100, period => 10},
          [#{id => client, start => {fabric_peer_client, start_link, []},
             restart => temporary, shutdown => 5000}]}}.
