%% @doc Line-oriented driver for tests and demos (used by `interop_tests/erlnode.py').
%%
%% Start: `erl -noshell -pa erlang_peer/_build/default/lib/fabric_peer/ebin -run fabric_peer_cli main'.
%% The node prints `ready <node>' once, then reads one Erlang term per line from stdin (the
%% final `.' is optional) and prints exactly one line per command on stdout:
%% `ok <Term>' or `error <Term>', the term printed with `~0tp' (one line). Logs go to stderr.
%% End of input or `quit.' stops the node.
%%
%% Handles: servers, connections and pids obtained by commands are numbered (`S', `C', `H'
%% below are the integers returned). Commands:
%% ```
%% {start_server, #{port => 0, secret => "s", allowed => [ping], ...}}  -> ok #{id => S, port => P}
%% {demo_server, #{port => 0, secret => "s", ...}}   ping/echo/counter + server allowing them
%%   (mode => legacy, allow_legacy_auth => true: a legacy-only server, as the original)
%% {stop_server, S}                                  -> ok ok
%% {drain_server, S} | {drain_server, S, Opts}       fabric_peer:drain_server/1,2 -> ok ok
%% {start_demo, [ping | echo | counter]}             register the demo processes
%% {register, Name, ping | echo | counter | collector}
%% {allow, S | C, [Name]}                            add allowed names
%% {connect, Host, Port, Secret, Opts}               -> ok #{id => C}
%% {close, C} | {disconnect, C}                      close / simulate a network failure
%% {whereis, C, Name}                                -> ok #{handle => H, pid => "<0.1.0>"} | ok undefined
%% {send, Dest, Msg}                                 Dest: {handle, H} | {name, C, Name} |
%%                                                   {name, C, Name, Node} | Name (local)
%% {call, Dest, Msg, TimeoutMs}                      sends {ReplyTo, Msg}, -> ok Reply (first message)
%% {ping, C, Name, Payload}                          whereis + {self(), Payload} -> ok {pong, Payload}
%% {monitor, H} | {link, H}                          a watcher reports {down, H, Reason} /
%%                                                   {exit, H, Reason} as an event
%% {exit, Name | {handle, H}, Reason}                exit(Pid, Reason) (kill included)
%% {events, TimeoutMs, MinCount}                     -> ok [Event] (waits for MinCount or TimeoutMs, clears)
%% {info, S | C}                                     -> ok Map
%% {eval, "Expr."}                                   test setup only; never reachable from the network
%% quit                                              -> ok bye, then the node stops
%% '''
%% Events are what `collector' processes received (`{collector, Name, Msg}') and what
%% watchers saw.
-module(fabric_peer_cli).

-export([main/0, handle/2, parse/1]).

-define(EVENTS, fabric_cli_events).

%% @doc Entry point for `-run fabric_peer_cli main'.
-spec main() -> no_return().
main() ->
    %% stdout carries the replies: logs go to stderr
    _ = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    {ok, _} = application:ensure_all_started(fabric_peer),
    register(?EVENTS, spawn_link(fun() -> events_loop([], []) end)),
    io:setopts(standard_io, [binary, {encoding, unicode}]),
    put(handles, #{}),
    put(next, 1),
    out("ready ~0tp", [node()]),
    loop(#{}),
    halt(0).

loop(St) ->
    case io:get_line(standard_io, "") of
        eof -> ok;
        {error, _} -> ok;
        Line ->
            case parse(Line) of
                empty -> loop(St);
                {ok, quit} -> out("ok bye", []);
                {ok, Cmd} ->
                    {Reply, St1} = try handle(Cmd, St)
                                   catch C:R:Stk -> {{error, {C, R, hd(Stk ++ [none])}}, St}
                                   end,
                    reply(Reply),
                    loop(St1);
                {error, Why} ->
                    reply({error, {parse, Why}}),
                    loop(St)
            end
    end.

%% @doc One command line as an Erlang term (the final `.' is optional); `empty' for a blank
%% line. Also used by the benchmark driver (bench/erl), which reads the same line format.
-spec parse(unicode:chardata()) -> {ok, term()} | empty | {error, string()}.
parse(Line) ->
    Text = string:trim(unicode:characters_to_list(Line)),
    case Text of
        "" -> empty;
        _ ->
            Full = case lists:last(Text) of $. -> Text; _ -> Text ++ "." end,
            case erl_scan:string(Full) of
                {ok, Toks, _} ->
                    case erl_parse:parse_term(Toks) of
                        {ok, T} -> {ok, T};
                        {error, {_, _, Msg}} -> {error, lists:flatten(erl_parse:format_error(Msg))}
                    end;
                {error, {_, _, Msg}, _} -> {error, lists:flatten(erl_scan:format_error(Msg))}
            end
    end.

reply({ok, V}) -> out("ok ~0tp", [V]);
reply({error, V}) -> out("error ~0tp", [V]);
reply(V) -> out("ok ~0tp", [V]).

out(Fmt, Args) ->
    io:put_chars(standard_io, [io_lib:format(Fmt, Args), $\n]).

%% @doc Execute one command (exported for tests); the map holds servers and connections.
-spec handle(term(), map()) -> {{ok, term()} | {error, term()}, map()}.
handle({start_server, Opts}, St) when is_map(Opts) ->
    {Port, Secret, Rest} = server_args(Opts),
    case fabric_peer:start_server(Port, Secret, Rest) of
        {ok, S} -> store(server, S, St, fun(Id) -> #{id => Id, port => fabric_peer:port(S)} end);
        E -> {E, St}
    end;
handle({demo_server, Opts}, St) when is_map(Opts) ->
    {Port, Secret, Rest} = server_args(Opts),
    case fabric_peer_demo:start(Port, Secret, Rest) of
        {ok, S} -> store(server, S, St, fun(Id) -> #{id => Id, port => fabric_peer:port(S)} end);
        E -> {E, St}
    end;
handle({stop_server, Id}, St) ->
    ok = fabric_peer:stop_server(maps:get({server, Id}, St)),
    {{ok, ok}, maps:remove({server, Id}, St)};
handle({drain_server, Id}, St) ->
    {{ok, fabric_peer:drain_server(maps:get({server, Id}, St))}, St};
handle({drain_server, Id, Opts}, St) when is_map(Opts) ->
    {{ok, fabric_peer:drain_server(maps:get({server, Id}, St), Opts)}, St};
handle({start_demo, Names}, St) ->
    [ok = fabric_peer_demo:register_demo(N, N) || N <- Names],
    {{ok, ok}, St};
handle({register, Name, Kind}, St) ->
    {{ok, fabric_peer_demo:register_demo(Name, Kind)}, St};
handle({allow, Id, Names}, St) ->
    Target = case maps:find({server, Id}, St) of
                 {ok, S} -> S;
                 error -> maps:get({conn, Id}, St)
             end,
    {{ok, fabric_peer:allow(Target, Names)}, St};
handle({connect, Host, Port, Secret, Opts}, St) ->
    case fabric_peer:connect(Host, Port, Secret, Opts) of
        {ok, C} -> store(conn, C, St, fun(Id) -> #{id => Id} end);
        E -> {E, St}
    end;
handle({close, Id}, St) ->
    ok = fabric_peer:close(conn(Id, St)),
    {{ok, ok}, maps:remove({conn, Id}, St)};
handle({disconnect, Id}, St) ->
    {{ok, fabric_peer:disconnect(conn(Id, St))}, St};
handle({whereis, Id, Name}, St) ->
    case fabric_peer:whereis(conn(Id, St), Name) of
        Pid when is_pid(Pid) -> {{ok, #{handle => handle_of(Pid), pid => pid_to_list(Pid)}}, St};
        Other -> {{ok, Other}, St}
    end;
handle({send, Dest, Msg}, St) ->
    {fabric_peer:send(dest(Dest, St), Msg), St};
handle({call, Dest, Msg, Timeout}, St) ->
    D = dest(Dest, St),
    {request(fun(Me) -> fabric_peer:send(D, {Me, Msg}) end, Timeout), St};
handle({ping, Id, Name, Payload}, St) ->
    case fabric_peer:whereis(conn(Id, St), Name) of
        Pid when is_pid(Pid) ->
            {request(fun(Me) -> fabric_peer:send(Pid, {Me, Payload}) end, 5000, Pid), St};
        Other -> {{error, {whereis, Other}}, St}
    end;
handle({monitor, H}, St) ->
    Pid = handle_pid(H),
    %% answered once the monitor is set: a target that ends right after the reply is seen
    %% with its own reason, not noproc
    watch(fun(Ready) ->
                  Ref = monitor(process, Pid),
                  Ready(),
                  receive {'DOWN', Ref, process, _, R} -> event({down, H, R}) end
          end),
    {{ok, ok}, St};
handle({link, H}, St) ->
    Pid = handle_pid(H),
    watch(fun(Ready) ->
                  process_flag(trap_exit, true),
                  link(Pid),
                  Ready(),
                  receive {'EXIT', Pid, R} -> event({exit, H, R}) end
          end),
    {{ok, ok}, St};
handle({exit, Target, Reason}, St) ->
    Pid = case Target of
              {handle, H} -> handle_pid(H);
              Name when is_atom(Name) -> whereis(Name)
          end,
    case is_pid(Pid) of
        true -> exit(Pid, Reason), {{ok, ok}, St};
        false -> {{error, noproc}, St}
    end;
handle({events, Timeout, Min}, St) ->
    %% Exactly one reply per request: a request that times out is cancelled, and the
    %% collector answers the cancel with what it has unless it already answered the request
    %% (then that reply is the one in our mailbox). No late reply is left behind.
    Ref = make_ref(),
    ?EVENTS ! {take, self(), Ref, Min},
    receive {events, Ref, Evs} -> {{ok, Evs}, St}
    after Timeout ->
            ?EVENTS ! {cancel, Ref},
            receive {events, Ref, Evs} -> {{ok, Evs}, St} end
    end;
handle({info, Id}, St) ->
    case maps:find({server, Id}, St) of
        {ok, S} -> {{ok, maps:remove(conns, fabric_peer:info(S))}, St};
        error -> {{ok, fabric_peer:info(conn(Id, St))}, St}
    end;
handle({eval, Text}, St) ->
    {ok, Toks, _} = erl_scan:string(Text),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    {value, V, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    {{ok, V}, St};
handle(Other, St) ->
    {{error, {unknown_command, Other}}, St}.

server_args(Opts) ->
    Port = maps:get(port, Opts, 0),
    Secret = maps:get(secret, Opts),
    {Port, Secret, maps:without([port, secret], Opts)}.

store(Kind, V, St, Reply) ->
    Id = next(),
    {{ok, Reply(Id)}, St#{{Kind, Id} => V}}.

conn(Id, St) -> maps:get({conn, Id}, St).

next() ->
    N = get(next),
    put(next, N + 1),
    N.

handle_of(Pid) ->
    Hs = get(handles),
    case [H || {H, P} <- maps:to_list(Hs), P =:= Pid] of
        [H | _] -> H;
        [] -> H = next(), put(handles, Hs#{H => Pid}), H
    end.

%% Run Watch(Ready) in a new process and return once it has called Ready() (its monitor or
%% link is set) or after 5 s.
watch(Watch) ->
    Self = self(),
    W = spawn(fun() -> Watch(fun() -> Self ! {watching, self()} end) end),
    receive {watching, W} -> ok after 5000 -> ok end.

handle_pid(H) -> maps:get(H, get(handles)).

dest({handle, H}, _) -> handle_pid(H);
dest({name, Id, Name}, St) -> {conn(Id, St), Name};
dest({name, Id, Name, Node}, St) -> {conn(Id, St), {Name, Node}};
dest(Name, _) when is_atom(Name) -> whereis(Name).

%% Send with a fresh reply process and wait for the first message it gets.
request(Send, Timeout) -> request(Send, Timeout, any).
request(Send, Timeout, From) ->
    Self = self(),
    Ref = make_ref(),
    Me = spawn(fun() ->
                       receive
                           {From, M} when From =/= any -> Self ! {Ref, M};
                           M -> Self ! {Ref, M}
                       after Timeout -> Self ! {Ref, '$timeout'}
                       end
               end),
    case Send(Me) of
        ok ->
            receive
                {Ref, '$timeout'} -> {error, timeout};
                {Ref, M} -> {ok, M}
            end;
        E -> exit(Me, kill), E
    end.

event(E) -> ?EVENTS ! {event, E}, ok.

%% The collector of events: `Waiting' holds the pending `{take, ...}' requests in order.
events_loop(Evs, Waiting) ->
    receive
        {event, E} -> serve(Evs ++ [E], Waiting);
        {take, From, Ref, Min} -> serve(Evs, Waiting ++ [{From, Ref, Min}]);
        {cancel, Ref} ->
            case lists:keytake(Ref, 2, Waiting) of
                {value, {From, Ref, _}, Rest} ->
                    From ! {events, Ref, Evs},
                    serve([], Rest);
                false ->
                    %% already answered
                    events_loop(Evs, Waiting)
            end
    end.

serve(Evs, [{From, Ref, Min} | Rest]) when length(Evs) >= Min ->
    From ! {events, Ref, Evs},
    serve([], Rest);
serve(Evs, Waiting) -> events_loop(Evs, Waiting).
