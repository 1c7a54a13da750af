%% @doc Top supervisor. Owns the two public tables every part of the application reads:
%% `fabric_peer_registry' (per server or client handle: port, policy, sessions, the
%% connection supervisor) and `fabric_peer_proxies' (proxy pid -> connection pid, so that
%% `fabric_peer:send/2' can report errors synchronously). Both are owned by this
%% long-lived process so they survive any worker crash.
-module(fabric_peer_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

%% @doc Start the top supervisor.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Supervisor callback.
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    _ = ets:new(fabric_peer_registry, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(fabric_peer_proxies, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(fabric_peer_throttle:table(), [named_table, public, set]),
    Sup = fun(Name) -> #{id => Name, start => {Name, start_link, []}, type => supervisor,
                         shutdown => infinity} end,
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10},
          [Sup(fabric_peer_servers_sup), Sup(fabric_peer_clients_sup)]}}.
