%% @doc The session of one connection, as pure data: everything both sides must agree on
%% and that outlives a socket when the `session' feature resumes it (docs/protocol.md 4.3,
%% 6). No process is monitored or spawned here; the connection does that and records the
%% result.
%%
%% <ul>
%% <li>exports: our processes known to the peer as `{pr, Id}', and their monitors;</li>
%% <li>graves: exported processes that ended keep their id -> pid entry ("Identity
%%   survives death"), so a pid shipped again after its DEAD is still `{pr, Id}';</li>
%% <li>proxies: the peer's processes, one local proxy per remote id, and their monitors;</li>
%% <li>proxy graves: proxies that ended, so shipping one back still gives `{pl, Id}';</li>
%% <li>the DEAD notices recently written (resent after a resume);</li>
%% <li>gen calls from the peer whose alias tag was replaced (see fabric_peer_protocol);</li>
%% <li>the translations of the peer's references of nodes unknown here
%%   (`fabric_peer_refs');</li>
%% <li>the outbox: frames written while there is no socket, sent on resume (with the
%%   `acks' feature the sequencing state of `fabric_peer_seq' replaces it: counts, and the
%%   outbox of every frame not acknowledged, replayed on resume; it and the `credit'
%%   state are session state too, kept in the protocol record, which changes with every
%%   message anyway, issue 15).</li>
%% </ul>
-module(fabric_peer_session).

-export([new/0, reset/1,
         export_of/2, exported/2, export_count/1, issued/2, next_id/1, add_export/2, watch_export/3,
         export_down/4, forget_export/2, grave_of/2, grave_pid/2,
         proxy_of/2, proxy_id/2, proxy_count/1, proxies/1, add_proxy/3, watch_proxy/3,
         end_proxy/2, proxy_down/3, buried_proxy/2, dead_proxy/2, alive_behind/2, remote_ended/2,
         dead_written/2, recent_dead/1,
         call_in/3, call_out/3,
         refs/1, set_refs/2, funs/1, set_funs/2,
         enqueue/4, take_outbox/1, outbox_len/1]).

-export_type([session/0]).

%% How many ended exported processes (and ended proxies) are remembered; older ones are
%% forgotten (an unknown {pl, Id} then gets an exited placeholder pid).
-define(GRAVE_SIZE, 1024).
-define(RECENT_DEAD, 256).
%% Pending gen calls from the peer remembered for their reply (a call never answered stays
%% until this many newer ones pushed it out).
-define(MAX_CALLS, 4096).

-record(session, {
          next_id = 1 :: pos_integer(),
          exp_pid = #{} :: #{pid() => pos_integer()},
          exp_id = #{} :: #{pos_integer() => pid()},
          exp_mon = #{} :: #{reference() => pos_integer()},
          grave = #{} :: #{pos_integer() => pid()},
          grave_pid = #{} :: #{pid() => {pos_integer(), term()}},
          grave_q = queue:new() :: queue:queue(pos_integer()),
          prox_id = #{} :: #{integer() => pid()},
          prox_pid = #{} :: #{pid() => integer()},
          prox_mon = #{} :: #{reference() => integer()},
          pgrave = #{} :: #{pid() => integer()},
          pgrave_id = #{} :: #{integer() => pid()},
          pgrave_q = queue:new() :: queue:queue(pid()),
          recent_dead = queue:new() :: queue:queue(tuple()),
          calls = #{} :: #{reference() => pid()},
          calls_q = queue:new() :: queue:queue(reference()),
          refs = fabric_peer_refs:new() :: fabric_peer_refs:refs(),
          funs = fabric_peer_funs:new() :: fabric_peer_funs:funs(),
          outbox = queue:new() :: queue:queue(binary()),
          queued_msgs = 0 :: non_neg_integer()
         }).

-opaque session() :: #session{}.

%% @doc An empty session.
-spec new() -> session().
new() -> #session{}.

%% @doc Forget the session (no session, or it was not resumed). Returns the live proxies
%% (the caller ends them) and the exports' monitors (the caller drops them). Pending gen
%% call tags stay: a late reply through a proxy still finds its caller's tag. So do the
%% reference translations: a local reference handed out keeps standing for the peer's.
-spec reset(session()) -> {[pid()], [reference()], session()}.
reset(#session{calls = C, calls_q = Q, refs = R, funs = F} = S) ->
    {maps:keys(S#session.prox_pid), maps:keys(S#session.exp_mon),
     #session{calls = C, calls_q = Q, refs = R, funs = F}}.

%%% exports

%% @doc The id of exported process `Pid'.
-spec export_of(pid(), session()) -> {ok, pos_integer()} | error.
export_of(Pid, #session{exp_pid = EP}) -> maps:find(Pid, EP).

%% @doc The live exported process with id `Id'.
-spec exported(pos_integer(), session()) -> {ok, pid()} | error.
exported(Id, #session{exp_id = EI}) -> maps:find(Id, EI).

%% @doc How many processes are exported.
-spec export_count(session()) -> non_neg_integer().
export_count(#session{exp_pid = EP}) -> map_size(EP).

%% @doc True when `Id' was issued to the peer (whether or not its process still runs).
-spec issued(integer(), session()) -> boolean().
issued(Id, #session{next_id = N}) -> Id > 0 andalso Id < N.

%% @doc The id the next exported process gets.
-spec next_id(session()) -> pos_integer().
next_id(#session{next_id = N}) -> N.

%% @doc Export `Pid' (or return its id if it is exported). `new' tells the caller to
%% monitor it and record the monitor with `watch_export/3'.
-spec add_export(pid(), session()) -> {new | known, pos_integer(), session()}.
add_export(Pid, #session{exp_pid = EP, exp_id = EI, next_id = Id} = S) ->
    case EP of
        #{Pid := Known} -> {known, Known, S};
        _ -> {new, Id, S#session{next_id = Id + 1, exp_pid = EP#{Pid => Id}, exp_id = EI#{Id => Pid}}}
    end.

%% @doc Record the monitor of exported process `Id'.
-spec watch_export(reference(), pos_integer(), session()) -> session().
watch_export(Ref, Id, #session{exp_mon = M} = S) -> S#session{exp_mon = M#{Ref => Id}}.

%% @doc The monitor `Ref' fired. For an exported process: it is buried, and its DEAD
%% notice is returned, to be written (`dead_written/2' once it is: it may first wait for
%% the process's last messages, fabric_peer_dead_order).
-spec export_down(reference(), pid(), term(), session()) -> {dead, tuple(), session()} | error.
export_down(Ref, Pid, Reason, #session{exp_mon = M} = S) ->
    case maps:take(Ref, M) of
        {Id, M1} ->
            S1 = bury(Id, Pid, Reason, S#session{exp_mon = M1,
                                                 exp_pid = maps:remove(Pid, S#session.exp_pid),
                                                 exp_id = maps:remove(Id, S#session.exp_id)}),
            {dead, {'DEAD', {pr, Id}, Reason}, S1};
        error -> error
    end.

%% @doc The DEAD notice of an exported process was written (or queued): remembered for a
%% resume (the last ?RECENT_DEAD).
-spec dead_written(tuple(), session()) -> session().
dead_written(Dead, #session{recent_dead = R} = S) ->
    Recent = queue:in(Dead, R),
    S#session{recent_dead = case queue:len(Recent) > ?RECENT_DEAD of
                                true -> queue:drop(Recent);
                                false -> Recent
                            end}.

%% @doc Forget the export of `Pid' without a grave (a routing server's grace period,
%% docs/protocol.md 16.4): its id is void, a later export gets a new one. Returns its id
%% and monitor (for the caller to demonitor).
-spec forget_export(pid(), session()) -> {ok, pos_integer(), reference(), session()} | error.
forget_export(Pid, #session{exp_pid = EP, exp_id = EI, exp_mon = M} = S) ->
    case maps:take(Pid, EP) of
        {Id, EP1} ->
            case [R || {R, I} <- maps:to_list(M), I =:= Id] of
                [Ref] -> {ok, Id, Ref, S#session{exp_pid = EP1, exp_id = maps:remove(Id, EI),
                                                 exp_mon = maps:remove(Ref, M)}};
                _ -> error
            end;
        error -> error
    end.

bury(Id, Pid, Reason, #session{grave = G, grave_pid = GP, grave_q = Q} = S) ->
    Q1 = queue:in(Id, Q),
    G1 = G#{Id => Pid},
    GP1 = GP#{Pid => {Id, Reason}},
    case queue:len(Q1) > ?GRAVE_SIZE of
        true ->
            {{value, Old}, Q2} = queue:out(Q1),
            OldPid = maps:get(Old, G1),
            S#session{grave = maps:remove(Old, G1), grave_pid = maps:remove(OldPid, GP1),
                      grave_q = Q2};
        false -> S#session{grave = G1, grave_pid = GP1, grave_q = Q1}
    end.

%% @doc The old id and exit reason of an exported process that ended.
-spec grave_of(pid(), session()) -> {ok, {pos_integer(), term()}} | error.
grave_of(Pid, #session{grave_pid = GP}) -> maps:find(Pid, GP).

%% @doc The pid an ended export's id stood for.
-spec grave_pid(integer(), session()) -> {ok, pid()} | error.
grave_pid(Id, #session{grave = G}) -> maps:find(Id, G).

%%% proxies

%% @doc The live proxy for the peer's process `Id'.
-spec proxy_of(integer(), session()) -> {ok, pid()} | error.
proxy_of(Id, #session{prox_id = PI}) -> maps:find(Id, PI).

%% @doc The remote id a live proxy stands for.
-spec proxy_id(pid(), session()) -> {ok, integer()} | error.
proxy_id(Pid, #session{prox_pid = PP}) -> maps:find(Pid, PP).

%% @doc How many live proxies there are.
-spec proxy_count(session()) -> non_neg_integer().
proxy_count(#session{prox_id = PI}) -> map_size(PI).

%% @doc The live proxies.
-spec proxies(session()) -> [pid()].
proxies(#session{prox_pid = PP}) -> maps:keys(PP).

%% @doc Record the new proxy `Pid' for remote id `Id'.
-spec add_proxy(integer(), pid(), session()) -> session().
add_proxy(Id, Pid, #session{prox_id = PI, prox_pid = PP} = S) ->
    S#session{prox_id = PI#{Id => Pid}, prox_pid = PP#{Pid => Id}}.

%% @doc Record the monitor of proxy `Id'.
-spec watch_proxy(reference(), integer(), session()) -> session().
watch_proxy(Ref, Id, #session{prox_mon = M} = S) -> S#session{prox_mon = M#{Ref => Id}}.

%% @doc Live proxy `Pid' ended: it is no longer live and is remembered as dead (its
%% monitor entry stays until its DOWN).
-spec end_proxy(pid(), session()) -> session().
end_proxy(Pid, #session{prox_id = PI, prox_pid = PP} = S) ->
    case maps:take(Pid, PP) of
        {Id, PP1} -> bury_proxy(Pid, Id, S#session{prox_id = maps:remove(Id, PI), prox_pid = PP1});
        error -> S
    end.

%% @doc Proxy monitor `Ref' fired for `Pid'. `killed_live': the proxy was still live (it
%% was ended locally, not by a DEAD); it is now buried.
-spec proxy_down(reference(), pid(), session()) ->
          {killed_live, integer(), session()} | {ok, session()} | error.
proxy_down(Ref, Pid, #session{prox_mon = M} = S) ->
    case maps:take(Ref, M) of
        {Id, M1} ->
            S1 = S#session{prox_mon = M1},
            case S1#session.prox_pid of
                #{Pid := Id} -> {killed_live, Id, end_proxy(Pid, S1)};
                _ -> {ok, S1}
            end;
        error -> error
    end.

bury_proxy(Pid, Id, #session{pgrave = G, pgrave_id = GI, pgrave_q = Q} = S) ->
    Q1 = queue:in(Pid, Q),
    G1 = G#{Pid => Id},
    GI1 = case GI of #{Id := _} -> GI; _ -> GI#{Id => Pid} end,
    case queue:len(Q1) > ?GRAVE_SIZE of
        true ->
            {{value, Old}, Q2} = queue:out(Q1),
            OldId = maps:get(Old, G1),
            GI2 = case GI1 of #{OldId := Old} -> maps:remove(OldId, GI1); _ -> GI1 end,
            S#session{pgrave = maps:remove(Old, G1), pgrave_id = GI2, pgrave_q = Q2};
        false -> S#session{pgrave = G1, pgrave_id = GI1, pgrave_q = Q1}
    end.

%% @doc Proxy `Pid' ended but the remote process it stands for did not (a peer without the
%% `link' feature cannot be told of `exit(Proxy, kill)'): the dead pid keeps its remote id
%% (shipped back it is still that process), but a later `{pr, Id}' gets a new, live proxy.
-spec alive_behind(pid(), session()) -> session().
alive_behind(Pid, #session{pgrave = G, pgrave_id = GI} = S) ->
    case G of
        #{Pid := Id} when map_get(Id, GI) =:= Pid -> S#session{pgrave_id = maps:remove(Id, GI)};
        _ -> S
    end.

%% @doc The remote id of a proxy that ended.
-spec buried_proxy(pid(), session()) -> {ok, integer()} | error.
buried_proxy(Pid, #session{pgrave = G}) -> maps:find(Pid, G).

%% @doc The dead proxy that stands for remote id `Id' (no live proxy does).
-spec dead_proxy(integer(), session()) -> {ok, pid()} | error.
dead_proxy(Id, #session{pgrave_id = G, prox_id = PI}) ->
    case is_map_key(Id, PI) of
        true -> error;
        false -> maps:find(Id, G)
    end.

%% @doc The peer's process `A' ended (its DEAD ended our proxy for it) and no proxy stands
%% for it.
-spec remote_ended(integer(), session()) -> boolean().
remote_ended(A, #session{prox_id = PI, pgrave_id = G}) ->
    not is_map_key(A, PI) andalso is_map_key(A, G).

%% @doc The DEAD notices recently written, oldest first.
-spec recent_dead(session()) -> [tuple()].
recent_dead(#session{recent_dead = R}) -> queue:to_list(R).

%%% gen calls from the peer

%% @doc Remember that the peer's caller `From' (a proxy) waits for a reply tagged `Ref'.
-spec call_in(reference(), pid(), session()) -> session().
call_in(Ref, From, #session{calls = C, calls_q = Q} = S) ->
    Q1 = queue:in(Ref, Q),
    {C1, Q2} = case queue:len(Q1) > ?MAX_CALLS of
                   true ->
                       {{value, Old}, Q3} = queue:out(Q1),
                       {maps:remove(Old, C), Q3};
                   false -> {C, Q1}
               end,
    S#session{calls = C1#{Ref => From}, calls_q = Q2}.

%% @doc A reply tagged `Ref' sent to proxy `Proxy': `ok' (and forgotten) when it answers a
%% remembered call of that proxy. The queue entry stays until pushed out; a stale one only
%% costs a lookup.
-spec call_out(reference(), pid(), session()) -> {ok, session()} | error.
call_out(Ref, Proxy, #session{calls = C} = S) ->
    case C of
        #{Ref := Proxy} -> {ok, S#session{calls = maps:remove(Ref, C)}};
        _ -> error
    end.

%%% references

%% @doc The funs sent on this connection (fabric_peer_funs).
-spec funs(session()) -> fabric_peer_funs:funs().
funs(#session{funs = F}) -> F.

%% @doc Replace the table of funs sent.
-spec set_funs(fabric_peer_funs:funs(), session()) -> session().
set_funs(F, S) -> S#session{funs = F}.

%% @doc The translations of the peer's foreign references (fabric_peer_refs).
-spec refs(session()) -> fabric_peer_refs:refs().
refs(#session{refs = R}) -> R.

%% @doc Replace the reference translations.
-spec set_refs(fabric_peer_refs:refs(), session()) -> session().
set_refs(R, S) -> S#session{refs = R}.

%%% the outbox

%% @doc Keep a frame written while there is no socket: control frames always, messages up
%% to `Max' (0 refuses them with `not_connected').
-spec enqueue(msg | ctrl, binary(), non_neg_integer(), session()) ->
          {ok, session()} | {{error, not_connected | queue_full}, session()}.
enqueue(msg, _, Max, #session{queued_msgs = N} = S) when N >= Max ->
    {{error, case Max of 0 -> not_connected; _ -> queue_full end}, S};
enqueue(Kind, Bin, _, #session{outbox = Q, queued_msgs = N} = S) ->
    N1 = case Kind of msg -> N + 1; ctrl -> N end,
    {ok, S#session{outbox = queue:in(Bin, Q), queued_msgs = N1}}.

%% @doc Take the outbox, oldest frame first, leaving it empty.
-spec take_outbox(session()) -> {[binary()], session()}.
take_outbox(#session{outbox = Q} = S) ->
    {queue:to_list(Q), S#session{outbox = queue:new(), queued_msgs = 0}}.

%% @doc How many frames wait in the outbox.
-spec outbox_len(session()) -> non_neg_integer().
outbox_len(#session{outbox = Q}) -> queue:len(Q).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

%% a foreign reference (of a node unknown here) keeps its translation across a reset
refs_survive_reset_test() ->
    Node = <<"py_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@nohost">>,
    Bin = <<131, 90, 0, 3, 119, (byte_size(Node)), Node/binary, 1:32, 1:32, 2:32, 3:32>>,
    {ok, Local, Refs} = fabric_peer_refs:in(Bin, refs(new())),
    {_, _, S} = reset(set_refs(Refs, new())),
    ?assertEqual(Bin, fabric_peer_refs:out(Local, refs(S))),
    ?assertEqual({ok, Local, Refs}, fabric_peer_refs:in(Bin, refs(S))).
-endif.
