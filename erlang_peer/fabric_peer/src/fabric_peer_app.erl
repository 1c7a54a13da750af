%% @doc The `fabric_peer' application: starts the top supervisor.
%%
%% erlang_peer logs report maps in the logger domain `[fabric_peer]'. OTP's default handler
%% passes only events without a domain or in `[otp]' / `[otp, sasl]': so that ours are not
%% silently dropped there, the application adds a handler filter `fabric_peer' to the
%% `default' handler that passes the domain `[fabric_peer]' (removed when the application
%% stops). The application environment `{log_to_default_handler, false}' leaves the default
%% handler alone (README "Logging").
-module(fabric_peer_app).
-behaviour(application).

-export([start/2, stop/1]).

-define(FILTER, fabric_peer).

%% @doc Application callback.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    %% Handshake frames are decoded without creating atoms, so the protocol's atoms (hello,
    %% challenge, response, m, t, pr, ...) must exist before the first frame: they do once
    %% the modules naming them are loaded (an interactive node loads modules lazily).
    {ok, Mods} = application:get_key(fabric_peer, modules),
    [{module, _} = code:ensure_loaded(M) || M <- Mods],
    ok = add_log_filter(application:get_env(fabric_peer, log_to_default_handler, true)),
    fabric_peer_sup:start_link().

%% @doc Application callback.
-spec stop(term()) -> ok.
stop(_State) ->
    _ = logger:remove_handler_filter(default, ?FILTER),
    ok.

add_log_filter(true) ->
    case logger:add_handler_filter(default, ?FILTER,
                                   {fun logger_filters:domain/2, {log, sub, [fabric_peer]}}) of
        ok -> ok;
        {error, {already_exist, ?FILTER}} -> ok;
        %% no default handler (removed or replaced by the user): nothing to do
        {error, {not_found, default}} -> ok
    end;
add_log_filter(false) -> ok.
