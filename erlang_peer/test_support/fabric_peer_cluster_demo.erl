%% @doc The Erlang side of `make demo-cluster' (demos/cluster_demo.py, docs/cluster.md):
%% one clustered erlang_peer server per distributed node, and on one of them an erlang_peer
%% client of another server.
%%
%% `erl -sname N -setcookie C ... -run fabric_peer_cluster_demo main Secret Scope [Node
%% [PortB]]': start a server (port 0: the OS picks) with `routing', `cluster => Scope' and
%% `register_global' that allows the global name `demo_echo'; connect to `Node' (the first
%% server's node) when given and wait until the servers of the connected nodes are in the scope; print
%% `port <N>' (the driver's only input from this node) and keep running. With `PortB', also
%% start the demo client: client node `ecl@127.0.0.1' of the server at `PortB', with this
%% node's server as its fallback, allowing `ecl_echo', and keep `demo_echo' registered in
%% `global' through its server (again after a failover: the registration ends with its
%% session).
%%
%% `ecl_echo' answers `{From, Msg}' with `{self(), {ecl_echo, ServerPort, Msg}}', where
%% `ServerPort' is the port of the server the client is connected to now, and for
%% `{From, {tell, Name, Node, Msg}}' it also sends `{from_ecl, Msg}' to `{Name, Node}' through
%% its server.
-module(fabric_peer_cluster_demo).

-export([main/1]).

-define(CLIENT_NODE, 'ecl@127.0.0.1').

%% @doc `-run fabric_peer_cluster_demo main Secret Scope [Node [PortB]]'.
-spec main([string()]) -> no_return().
main([Secret, Scope | Rest]) ->
    logger:set_primary_config(level, warning),
    {ok, S} = fabric_peer:start_server(0, Secret, #{routing => true, cluster => list_to_atom(Scope),
                                                    register_global => true,
                                                    allowed => [demo_echo]}),
    Port = fabric_peer:port(S),
    case Rest of
        [] -> ok;
        [First | _] ->
            true = net_kernel:connect_node(list_to_atom(First)),
            ok = wait_servers(list_to_atom(Scope), 100)
    end,
    io:format("port ~b~n", [Port]),
    case Rest of
        [_, PortB] -> client(Secret, list_to_integer(PortB), Port);
        _ -> ok
    end,
    receive after infinity -> ok end.

%% Until the server of every connected node is in the scope.
wait_servers(_, 0) -> {error, servers_missing};
wait_servers(Scope, Tries) ->
    case length(pg:get_members(Scope, fabric_peer_servers)) >= length(nodes()) + 1 of
        true -> ok;
        false -> timer:sleep(50), wait_servers(Scope, Tries - 1)
    end.

%% The demo client: connected to the server at `PortB', falling back to `PortC'.
client(Secret, PortB, PortC) ->
    spawn(fun() ->
                  {ok, C} = fabric_peer:connect("127.0.0.1", PortB, Secret,
                                                #{node => ?CLIENT_NODE, allowed => [ecl_echo],
                                                  fallbacks => [{"127.0.0.1", PortC}]}),
                  Echo = spawn_link(fun() -> echo(C) end),
                  true = register(ecl_echo, Echo),
                  keep_global(C, Echo)
          end).

echo(C) ->
    receive
        {From, {tell, Name, Node, Msg}} when is_pid(From) ->
            R = fabric_peer:send({C, {Name, Node}}, {from_ecl, Msg}),
            From ! {self(), {ecl_echo, server_port(C), {told, R}}},
            echo(C);
        {From, Msg} when is_pid(From) ->
            From ! {self(), {ecl_echo, server_port(C), Msg}},
            echo(C);
        _ -> echo(C)
    end.

server_port(C) ->
    case fabric_peer:info(C) of
        #{peer := Peer} -> binary_to_integer(lists:last(binary:split(Peer, <<":">>, [global])));
        _ -> 0
    end.

%% `demo_echo' in `global', registered through the client's server whenever it is not.
keep_global(C, Echo) ->
    _ = case global:whereis_name(demo_echo) of
            undefined -> fabric_peer:register_global(C, demo_echo, Echo);
            _ -> ok
        end,
    timer:sleep(100),
    keep_global(C, Echo).
