%% A gen_server for the tests of gen_server:call through a proxy: `{echo, X}' replies X,
%% `from' replies the From it was called with, `{later, X}' replies X with gen_server:reply/2.
-module(fabric_peer_test_server).
-behaviour(gen_server).
-export([start/1, init/1, handle_call/3, handle_cast/2]).

start(Name) ->
    {ok, Pid} = gen_server:start({local, Name}, ?MODULE, [], []),
    Pid.

init([]) -> {ok, nostate}.

handle_call({echo, X}, _From, S) -> {reply, X, S};
handle_call(from, From, S) -> {reply, From, S};
handle_call({later, X}, From, S) ->
    spawn(fun() -> gen_server:reply(From, X) end),
    {noreply, S}.

handle_cast(_, S) -> {noreply, S}.
