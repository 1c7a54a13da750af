%% @doc What a connection's protocol must be answered at once (the `env' of
%% `fabric_peer_protocol:new/2'), for the connection process that calls `new/3': starting a
%% proxy, mailbox lengths (credit, docs/protocol.md 12.3), the exited placeholder and the
%% signaller pids, name lookups, the policy and the server-wide atom budget.
-module(fabric_peer_conn_env).

-export([new/3]).

%% @doc The env of connection `self()' of handle `Ref'.
-spec new(reference(), map(), map()) -> fabric_peer_protocol:env().
new(Ref, #{token := Token, counters := Ctr, max_pending := Max}, O) ->
    Self = self(),
    Route = fabric_peer_route_conn:env(Ref, O),
    Route#{self => Self,
      spawn_proxy => fun(Id) -> fabric_peer_proxy:start(Self, Id, {Token, Ctr, Max}) end,
      %% messages waiting in this connection's proxies (12.6)
      proxies_pending => fun() -> counters:get(Ctr, 1) end,
      %% a local process's mailbox length, or what waits for a proxy (credit, 12.3)
      mailbox => fun backlog/1,
      %% a pid whose process has already exited, substituted for an unknown {pl, Id}
      placeholder => fun() ->
                             {Pid, MRef} = spawn_monitor(fun() -> ok end),
                             receive {'DOWN', MRef, process, Pid, _} -> ok end,
                             Pid
                     end,
      %% the sender id used for `exit(Proxy, kill)', whose real caller is unknown
      signaller => fun() -> spawn_link(fun Loop() -> receive _ -> Loop() end end) end,
      %% the local registry, then global (docs/cluster.md section 5)
      whereis => fun fabric_peer_cluster:whereis_name/1,
      policy => fun() -> fabric_peer_registry:policy(Ref) end,
      server_atoms_left => fun() -> server_atoms_left(O) end,
      spend_server_atoms => fun(N) -> spend_server_atoms(N, O) end}.

server_atoms_left(#{server_atoms := Ctr, max_server_atoms := Max}) ->
    max(0, Max - atomics:get(Ctr, 1));
server_atoms_left(_) -> 16#7fffffff.

spend_server_atoms(N, #{server_atoms := Ctr}) -> atomics:add(Ctr, 1, N);
spend_server_atoms(_, _) -> ok.

%% The mailbox length of a local process (docs/protocol.md 12.3); for a proxy of a
%% connection, what waits in that connection and its proxies.
backlog(Pid) ->
    case fabric_peer_registry:proxy_entry(Pid) of
        {_, #{counters := Ctr}} -> counters:get(Ctr, 1) + counters:get(Ctr, 2);
        undefined ->
            case erlang:process_info(Pid, message_queue_len) of
                {message_queue_len, N} -> N;
                undefined -> gone
            end
    end.
