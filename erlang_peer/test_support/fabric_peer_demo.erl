%% @doc Demo processes and the demo server (`make demo', interop tests).
%%
%% `ping' is the seed's example: `{From, M}' -> `From ! {self(), {pong, M}}'. `echo' replies
%% `{self(), Msg}' to `{From, Msg}'. `counter' keeps an integer: `{From, incr}' and
%% `{From, get}' reply `{self(), N}'. A `collector' records every message it receives as an
%% event of the CLI (`{collector, Name, Msg}').
%%
%% Standalone: `erl -noshell -pa .../ebin -run fabric_peer_demo main 0 secret' starts the demo
%% server (port 0: the OS picks) and prints `port <N>'.
-module(fabric_peer_demo).

-export([start/3, register_demo/2, main/1, ping/0, echo/0, counter/1, collector/1]).

%% @doc Register the demo processes and start a server allowing them.
-spec start(inet:port_number(), iodata(), map()) -> {ok, fabric_peer:server()} | {error, term()}.
start(Port, Secret, Opts) ->
    [ok = register_demo(N, N) || N <- [ping, echo, counter], whereis(N) =:= undefined],
    Allowed = lists:usort([ping, echo, counter | maps:get(allowed, Opts, [])]),
    fabric_peer:start_server(Port, Secret, Opts#{allowed => Allowed}).

%% @doc Register a demo process of kind `Kind' as `Name' (replacing a previous one).
-spec register_demo(atom(), ping | echo | counter | collector) -> ok.
register_demo(Name, Kind) ->
    case whereis(Name) of
        undefined -> ok;
        Old -> unregister(Name), exit(Old, kill)
    end,
    Pid = case Kind of
              ping -> spawn(fun ping/0);
              echo -> spawn(fun echo/0);
              counter -> spawn(fun() -> counter(0) end);
              collector -> spawn(fun() -> collector(Name) end)
          end,
    true = register(Name, Pid),
    ok.

%% @doc The seed's ping loop.
-spec ping() -> no_return().
ping() ->
    receive {From, M} -> From ! {self(), {pong, M}}, ping() end.

%% @doc Replies `{self(), Msg}' to `{From, Msg}'.
-spec echo() -> no_return().
echo() ->
    receive
        {From, Msg} when is_pid(From) -> From ! {self(), Msg}, echo();
        _ -> echo()
    end.

%% @doc A counter.
-spec counter(integer()) -> no_return().
counter(N) ->
    receive
        {From, incr} -> From ! {self(), N + 1}, counter(N + 1);
        {From, get} -> From ! {self(), N}, counter(N);
        _ -> counter(N)
    end.

%% @doc Records every message as a CLI event.
-spec collector(atom()) -> no_return().
collector(Name) ->
    receive M ->
            case whereis(fabric_cli_events) of
                undefined -> ok;
                P -> P ! {event, {collector, Name, M}}
            end,
            collector(Name)
    end.

%% @doc `-run fabric_peer_demo main Port Secret': start the demo server and keep running.
-spec main([string()]) -> no_return().
main(Args) ->
    {Port, Secret} = case Args of
                         [P, S | _] -> {list_to_integer(P), S};
                         [P] -> {list_to_integer(P), "secret"};
                         [] -> {0, "secret"}
                     end,
    {ok, Srv} = start(Port, Secret, #{}),
    io:format("port ~b~n", [fabric_peer:port(Srv)]),
    receive after infinity -> ok end.
