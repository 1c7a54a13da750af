%% @doc Top supervisor. Owns the application's ETS tables, so they survive any worker
%% crash: the registry's two (created and only accessed by `fabric_peer_registry') and the
%% authentication throttle's (`fabric_peer_throttle').
-module(fabric_peer_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

%% @doc Start the top supervisor.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Supervisor callback.
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    ok = fabric_peer_registry:create_tables(),
    _ = ets:new(fabric_peer_throttle:table(), [named_table, public, set]),
    Sup = fun(Name) -> #{id => Name, start => {Name, start_link, []}, type => supervisor,
                         shutdown => infinity} end,
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10},
          [Sup(fabric_peer_servers_sup), Sup(fabric_peer_clients_sup)]}}.
