%% @doc One child per running server: its `fabric_peer_listener_sup'.
-module(fabric_peer_servers_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).
% started by its child spec
-ignore_xref([start_link/0]).

%% @doc Start the servers supervisor.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Supervisor callback.
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => simple_one_for_one, intensity => 5, period => 10},
          [#{id => server, start => {fabric_peer_listener_sup, start_link, []},
             restart => temporary, type => supervisor, shutdown => infinity}]}}.
