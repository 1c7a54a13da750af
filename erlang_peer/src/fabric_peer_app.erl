%% @doc The `fabric_peer' application: starts the top supervisor.
-module(fabric_peer_app).
-behaviour(application).

-export([start/2, stop/1]).

%% @doc Application callback.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) -> fabric_peer_sup:start_link().

%% @doc Application callback.
-spec stop(term()) -> ok.
stop(_State) -> ok.
