%% @doc The `fabric_peer' application: starts the top supervisor.
-module(fabric_peer_app).
-behaviour(application).

-export([start/2, stop/1]).

%% @doc Application callback.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    %% Handshake frames are decoded without creating atoms, so the protocol's atoms (hello,
    %% challenge, response, m, t, pr, ...) must exist before the first frame: they do once
    %% the modules naming them are loaded (an interactive node loads modules lazily).
    {ok, Mods} = application:get_key(fabric_peer, modules),
    [{module, _} = code:ensure_loaded(M) || M <- Mods],
    fabric_peer_sup:start_link().

%% @doc Application callback.
-spec stop(term()) -> ok.
stop(_State) -> ok.
