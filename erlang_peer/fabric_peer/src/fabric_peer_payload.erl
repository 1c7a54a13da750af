%% @doc Payloads both ways for fabric_peer_protocol: `fabric_peer_rewrite' run against the
%% session's id tables. A local pid going out becomes `{pl, Id}' (one of our proxies) or
%% `{pr, Id}' (exported, or remembered in its grave); `{pr, Id}' coming in becomes the
%% proxy for the peer's process (started when needed), `{pl, Id}' our process again.
%% Like the protocol it does no I/O: new monitors are `monitor_export' / `monitor_proxy'
%% actions, and proxies are started through the protocol's `env'.
-module(fabric_peer_payload).

-include("fabric_peer_protocol.hrl").

-export([rewrite_out/2, rewrite_in/2, pid_id/2, export/2, remote_pid/2, proxy_for/2,
         end_proxy/3, signaller/1, spend_atoms/2, server_atoms_left/1, fail/4, act/2]).

-type proto() :: fabric_peer_protocol:proto().

%%% rewriting

%% @doc A payload for the wire; the export limit refuses it whole.
-spec rewrite_out(term(), proto()) -> {ok, term(), proto()} | {{error, term()}, proto()}.
rewrite_out(Term, P) ->
    %% (the state is copied only to clear what an earlier rewrite left: a record update
    %% per message is a copy of the whole state, issue 15)
    P0 = case P#p.refused of
             undefined -> P;
             _ -> P#p{refused = undefined}
         end,
    case fabric_peer_rewrite:out(Term, P#p.feats, fun pid_out/2, P0) of
        {ok, W, #p{refused = undefined} = P1} -> {ok, W, P1};
        %% nothing is sent, and nothing the rewrite did is kept
        {ok, _, #p{refused = Why}} -> {{error, Why}, P};
        {error, Why} -> {{error, Why}, P}
    end.

pid_out(Ref, #p{s = S} = P) when is_reference(Ref) ->
    {{r, fabric_peer_refs:out(Ref, fabric_peer_session:refs(S))}, P};
pid_out(Fun, #p{s = S} = P) when is_function(Fun) ->
    {W, Funs} = fabric_peer_funs:out(Fun, fabric_peer_session:funs(S)),
    {W, P#p{s = fabric_peer_session:set_funs(Funs, S)}};
pid_out(_, #p{refused = R} = P) when R =/= undefined -> {{pr, 1}, P};
pid_out(Pid, #p{s = S, o = #{max_exports := Max}} = P) ->
    case fabric_peer_session:proxy_id(Pid, S) of
        {ok, Id} -> {{pl, Id}, P};
        error ->
            case fabric_peer_session:buried_proxy(Pid, S) of
                {ok, Id} -> {{pl, Id}, P};
                error ->
                    case fabric_peer_session:export_of(Pid, S) =/= error
                        orelse fabric_peer_session:export_count(S) < Max of
                        true ->
                            {Id, P1} = pid_id(Pid, P),
                            {{pr, Id}, P1};
                        false -> {{pr, 1}, P#p{refused = {limit, max_exports}}}
                    end
            end
    end.

%% The id a local pid goes out with. An exported process that ended keeps its id (the peer
%% remembers its dead proxy: docs/protocol.md 4.3, "Identity survives death"). A process
%% that sends `self()' through a proxy and ends at once is named in a frame after its DOWN:
%% its DEAD waits for that frame (fabric_peer_dead_order), so it goes out as its id, in both
%% modes, and the DEAD follows. A pid of an ended process whose DEAD was written (sent on by
%% another process) is its id too, and the DEAD is repeated after the frame, for a peer
%% that has forgotten the id (it would otherwise create a live proxy); a peer that
%% remembers ignores a DEAD for a dead proxy. An original (legacy) peer has no graves: such
%% a pid is exported again, as the original does.
-spec pid_id(pid(), proto()) -> {pos_integer(), proto()}.
pid_id(Pid, #p{mode = Mode, s = S} = P) ->
    case fabric_peer_session:grave_of(Pid, S) of
        {ok, {Id, Reason}} ->
            case fabric_peer_dead_order:pending(Id, P) of
                true -> {Id, P};
                false when Mode =:= extended ->
                    {Id, P#p{redead = [{'DEAD', {pr, Id}, Reason} | P#p.redead]}};
                false -> export(Pid, P)
            end;
        _ -> export(Pid, P)
    end.

%% @doc Export `Pid' (once: a new export is monitored through a `monitor_export' action).
-spec export(pid(), proto()) -> {pos_integer(), proto()}.
export(Pid, #p{s = S} = P) ->
    case fabric_peer_session:add_export(Pid, S) of
        {known, Id, _} -> {Id, P};
        {new, Id, S1} -> {Id, act({monitor_export, Pid, Id}, P#p{s = S1})}
    end.

%% Inbound rewriting in two passes when the payload names processes of the peer that have
%% no proxy yet: the first finds them (and checks max_proxies) without starting anything,
%% so a payload refused half-way has started no proxy; the second resolves them all.
-spec rewrite_in(term(), proto()) -> {ok, term(), proto()} | {error, {atom(), term()}, proto()}.
rewrite_in(Wire, P) ->
    P0 = case map_size(P#p.missing) of
             0 -> P;
             _ -> P#p{missing = #{}}
         end,
    case fabric_peer_rewrite:in(Wire, P#p.feats, fun resolve/3, P0) of
        {ok, T, #p{missing = M} = P1} when map_size(M) =:= 0 -> {ok, T, P1};
        {ok, _, #p{missing = M} = P1} ->
            P2 = lists:foldl(fun(Id, Acc) -> {ok, _, Acc1} = proxy_for(Id, Acc), Acc1 end,
                             P1#p{missing = #{}}, lists:sort(maps:keys(M))),
            case fabric_peer_rewrite:in(Wire, P2#p.feats, fun resolve/3, P2) of
                {ok, T, P3} -> {ok, T, P3};
                {error, Why} -> {error, in_error(Why), P2}
            end;
        {error, Why} -> {error, in_error(Why), P}
    end.

in_error({Code, Why}) when Code =:= bad_payload; Code =:= limit -> {Code, Why};
in_error(Other) -> {bad_payload, Other}.

resolve(pr, Id, #p{s = S, missing = M, o = #{max_proxies := Max}} = P) ->
    case fabric_peer_session:proxy_of(Id, S) of
        {ok, Pid} -> {ok, Pid, P};
        error ->
            case fabric_peer_session:dead_proxy(Id, S) of
                {ok, Dead} -> {ok, Dead, P};
                error when is_map_key(Id, M) -> {ok, placeholder_of(P), P};
                error ->
                    case fabric_peer_session:proxy_count(S) + map_size(M) >= Max of
                        true -> {error, {limit, {max_proxies, Max}}};
                        false -> {ok, placeholder_of(P), P#p{missing = M#{Id => true}}}
                    end
            end
    end;
resolve(pl, Id, #p{s = S} = P) ->
    case fabric_peer_session:exported(Id, S) of
        {ok, Pid} -> {ok, Pid, P};
        error ->
            case fabric_peer_session:grave_pid(Id, S) of
                {ok, Pid} -> {ok, Pid, P};
                error ->
                    {Dead, P1} = dead_pid(P),
                    {ok, Dead, P1}
            end
    end;
%% a reference of an unknown node is translated, creating no atom (fabric_peer_refs)
resolve(r, Bin, #p{s = S} = P) ->
    case fabric_peer_refs:in(Bin, fabric_peer_session:refs(S)) of
        {ok, Ref, Refs} -> {ok, Ref, P#p{s = fabric_peer_session:set_refs(Refs, S)}};
        error -> {error, {bad_payload, bad_reference}}
    end;
resolve(po, Bin, P) -> port_in(Bin, P);
%% one of the funs we sent is that fun again; any other is the inert handle (fabric_peer_funs)
resolve(f, {Arity, Bin}, #p{s = S} = P) ->
    {ok, fabric_peer_funs:in(Arity, Bin, fabric_peer_session:funs(S)), P}.

%% stands in for a proxy not started yet in the first pass (that result is thrown away)
placeholder_of(#p{env = #{self := Self}}) -> Self.

%% {po, Bin}: a port of a node known here is that port. One of a node unknown here is the
%% inert handle `{fabric_port, Bin}': decoding it would create the node's name as an atom,
%% one per node a peer names (every Python node has its own). The handle goes back to the
%% peer as the same `{po, Bin}' (fabric_peer_rewrite), so the port round-trips.
port_in(<<131, T, _/binary>> = Bin, P) when (T =:= 102 orelse T =:= 89 orelse T =:= 120),
                                            byte_size(Bin) =< 4096 ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0, max_decompressed => 4096}) of
        {ok, Port, 0} when is_port(Port) -> {ok, Port, P};
        {error, {limit, {new_atoms, 1}}} -> {ok, {fabric_port, Bin}, P};
        _ -> {error, {bad_payload, bad_port}}
    end;
port_in(_, _) -> {error, {bad_payload, bad_port}}.

%%% proxies

%% The pid standing for the peer's process Id: its proxy, or the same dead proxy when the
%% process is remembered as ended (docs/protocol.md 4.3).
-spec remote_pid(integer(), proto()) -> {ok, pid(), proto()} | {error, term(), proto()}.
remote_pid(Id, #p{s = S} = P) ->
    case fabric_peer_session:dead_proxy(Id, S) of
        {ok, Dead} -> {ok, Dead, P};
        error -> proxy_for(Id, P)
    end.

%% @doc The live proxy for the peer's process `Id', started if needed (within max_proxies).
-spec proxy_for(integer(), proto()) -> {ok, pid(), proto()} | {error, term(), proto()}.
proxy_for(Id, #p{s = S, o = #{max_proxies := Max}, env = #{spawn_proxy := Spawn}} = P) ->
    case fabric_peer_session:proxy_of(Id, S) of
        {ok, Pid} -> {ok, Pid, P};
        error ->
            case fabric_peer_session:proxy_count(S) >= Max of
                true -> {error, {max_proxies, Max}, P};
                false ->
                    Pid = Spawn(Id),
                    P1 = act({monitor_proxy, Pid, Id}, P#p{fresh = [Pid | P#p.fresh]}),
                    {ok, Pid, P1#p{s = fabric_peer_session:add_proxy(Id, Pid, S)}}
            end
    end.

%% End a proxy with the remote process's reason (its monitor entry stays until DOWN).
-spec end_proxy(pid(), term(), proto()) -> proto().
end_proxy(Proxy, Reason, #p{s = S} = P) ->
    P1 = act({forget_proxy, Proxy}, act({control, Proxy, {die, Reason}}, P)),
    P1#p{s = fabric_peer_session:end_proxy(Proxy, S)}.

dead_pid(#p{dead_pid = undefined, env = #{placeholder := Make}} = P) ->
    Pid = Make(),
    {Pid, P#p{dead_pid = Pid}};
dead_pid(#p{dead_pid = Pid} = P) -> {Pid, P}.

%% The sender id used for `exit(Proxy, kill)', whose real caller is unknown.
-spec signaller(proto()) -> {pid(), proto()}.
signaller(#p{signaller = undefined, env = #{signaller := Make}} = P) ->
    Pid = Make(),
    {Pid, P#p{signaller = Pid}};
signaller(#p{signaller = Pid} = P) -> {Pid, P}.

%% @doc What is left of the server-wide budget of new atoms.
-spec server_atoms_left(proto()) -> non_neg_integer().
server_atoms_left(#p{env = #{server_atoms_left := Left}}) -> Left().

%% @doc Count `N' atoms created by a decode, here and server-wide.
-spec spend_atoms(non_neg_integer(), proto()) -> proto().
spend_atoms(0, P) -> P;
spend_atoms(N, #p{env = #{spend_server_atoms := Spend}} = P) ->
    ok = Spend(N),
    P#p{atoms_left = max(0, P#p.atoms_left - N),
        stats = maps:update_with(new_atoms, fun(X) -> X + N end, P#p.stats)}.

%% @doc A frame dropped half-way (`Code', `Why'): the state before it (`Before'), keeping
%% what was done meanwhile (actions, proxies started, placeholder and signaller pids).
-spec fail(atom(), term(), proto(), proto()) -> {error, atom(), term(), proto()}.
fail(Code, Why, Before, After) ->
    {error, Code, Why, Before#p{acts = After#p.acts, fresh = After#p.fresh,
                                dead_pid = After#p.dead_pid, signaller = After#p.signaller}}.

%% @doc Add an action (the protocol returns them in order).
-spec act(fabric_peer_protocol:action(), proto()) -> proto().
act(A, #p{acts = As} = P) -> P#p{acts = [A | As]}.
