%% @doc The first child of a server's `fabric_peer_listener_sup': it records the server's
%% handle in the registry when the server starts (its name policy and allowed names) and
%% forgets it, with the server's authentication-failure records, when the server stops.
%%
%% Being the first child of a `rest_for_one' supervisor it starts before the connections
%% and the acceptors and stops after them, however the server is stopped: by
%% `fabric_peer:stop_server/1' under `fabric_peer_servers_sup', or by the user's own
%% supervisor for a server started with `fabric_peer:start_server_link/3'.
-module(fabric_peer_server_handle).
-behaviour(gen_server).

-export([start_link/1, ref/1]).
-export([init/1, handle_call/3, handle_cast/2, terminate/2]).
%% started by its child spec (fabric_peer_listener_sup)
-ignore_xref([start_link/1]).

%% @doc Start the keeper of a server's handle (from the server's settings map).
-spec start_link(map()) -> {ok, pid()}.
start_link(Ctx) -> gen_server:start_link(?MODULE, Ctx, []).

%% @doc The registry key of the server this keeper belongs to.
-spec ref(pid()) -> reference().
ref(Pid) -> gen_server:call(Pid, ref).

%% @private
-spec init(map()) -> {ok, reference()}.
init(#{ref := Ref, allowed := Allowed, force_system_names := Forced}) ->
    %% terminate/2 must run when the listener supervisor stops us
    process_flag(trap_exit, true),
    ok = fabric_peer_registry:init_handle(
           Ref, #{policy => fabric_peer_policy:new(Allowed, Forced), allowed => {Allowed, Forced}}),
    {ok, Ref}.

%% @private
-spec handle_call(ref, gen_server:from(), reference()) -> {reply, reference(), reference()}.
handle_call(ref, _From, Ref) -> {reply, Ref, Ref}.

%% @private
-spec handle_cast(term(), reference()) -> {noreply, reference()}.
handle_cast(_, Ref) -> {noreply, Ref}.

%% @private
-spec terminate(term(), reference()) -> ok.
terminate(_Reason, Ref) ->
    ok = fabric_peer_registry:forget(Ref),
    fabric_peer_throttle:forget(Ref).
