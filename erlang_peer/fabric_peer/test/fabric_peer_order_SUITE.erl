%% Signal order across a connection: between one pair of processes, signals (messages, exit
%% signals, links, unlinks, DOWN) arrive in the order they were sent, as in Erlang
%% (docs/protocol.md 5.2, "Order"). On the receiving side the connection delivers messages
%% itself while a proxy sends the signals that must come from the remote process's stand-in:
%% a later message must not overtake such a signal. Most cases are a raw extended peer
%% (this test process, process 7 of its own id space) writing its frames in one TCP write, so
%% the server's connection handles them in one event; one is two erlang_peer nodes with the
%% receiving connection suspended while the frames pile up.
%%
%% The send side also has a process of the server that sends through proxies and ends at
%% once: the raw peer reads its messages, then its DEAD (docs/protocol.md 12.6 "Ordering";
%% its DOWN reaches the connection directly while its messages go through the proxies, so
%% the DEAD waits for a barrier through the live proxies, fabric_peer_dead_order).
-module(fabric_peer_order_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [send/2, recv/1, ext_login/2, recv_nothing/2, wait_until/1]).

%% the raw peer's own process, as it names it on the wire ({pr, ?A})
-define(A, 7).
%% rounds of a race: one process each (the DEAD used to be written first in most)
-define(ROUNDS, 20).

all() -> [{group, receive_side}, {group, send_side}].

groups() ->
    [{receive_side, [], [exit2_then_message, exit2_then_message_between_erlang_peers,
                         link_then_message, unlink_then_message, link_exit_after_message,
                         dead_of_linked_after_message, down_after_message]},
     {send_side, [], [exit_signal_between_messages_goes_out_in_place,
                      last_message_then_dead_normal, last_message_then_dead_with_a_reason,
                      messages_through_proxies_then_dead, dead_waits_for_a_slow_proxy,
                      back_to_back_deads_keep_their_order, a_proxy_ending_lets_the_dead_go,
                      hibernated_proxy_answers_the_barrier, legacy_last_message_then_dead,
                      last_message_then_down_between_erlang_peers, dead_is_not_held_by_credit]}].

init_per_suite(Config) ->
    fabric_peer_test_lib:start_server("secret", #{}, fabric_peer_test_lib:init_suite(Config)).

end_per_suite(Config) -> fabric_peer_test_lib:stop_server(Config).

init_per_testcase(_, Config) ->
    fabric_peer_test_lib:flush(),
    Config.

%% A process of the server that traps exits and reports each message it gets with its links
%% at that moment (`{target, Msg, Links}'); `{monitor, P}' makes it monitor P, `{run, F}'
%% run F.
target(Config) ->
    Self = self(),
    {Name, Pid} = fabric_peer_test_lib:remote(?config(server, Config), "target",
                                              fun() -> process_flag(trap_exit, true), target_loop(Self) end),
    {Name, Pid}.

target_loop(Obs) ->
    receive
        {monitor, P} -> _ = monitor(process, P), Obs ! {target, monitoring}, target_loop(Obs);
        {run, F} when is_function(F, 0) -> F(), target_loop(Obs);
        M -> {links, L} = process_info(self(), links), Obs ! {target, M, L}, target_loop(Obs)
    end.

reports(0) -> [];
reports(N) ->
    receive {target, M, L} -> [{M, L} | reports(N - 1)] after 3000 -> ct:fail({missing_reports, N}) end.

%% A raw extended peer and the id of the target in the server's id space.
peer_and_target(Config) ->
    {Name, Pid} = target(Config),
    {S, _, _} = ext_login(?config(port, Config), "secret"),
    send(S, {whereis, 1, atom_to_binary(Name)}),
    {whereis_reply, 1, {pr, B}} = recv(S),
    {S, B, Pid}.

%% Frames in one TCP write: the server reads them in one chunk and handles them in a row.
burst(S, Frames) ->
    ok = inet:setopts(S, [{packet, raw}]),
    Bins = [term_to_binary(F) || F <- Frames],
    ok = gen_tcp:send(S, [[<<(byte_size(B)):32>>, B] || B <- Bins]),
    ok = inet:setopts(S, [{packet, 4}]).

%% The server's proxy of the raw peer's process ?A, as the target sees it (it is linked
%% to it after a `link' frame, or it got it in a message).
proxy_of_a(S, B) -> proxy_of(S, B, ?A).

%% The server's proxy of the raw peer's process `Id', as target B gets it in a message.
proxy_of(S, B, Id) ->
    send(S, {m, B, {t, {proxy, {pr, Id}}}}),
    [{{proxy, P}, _}] = reports(1),
    true = fabric_peer:is_proxy(P),
    P.

%%% receive side

%% `exit(B, between)' by A between two messages to B: B gets them in that order (it once got
%% `[a, c, EXIT]': the exit signal went through the proxy, the messages did not).
exit2_then_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    PA = proxy_of_a(S, B),
    [begin
         burst(S, [{m, B, {t, {a, I}}}, {exit2, ?A, B, {t, {between, I}}}, {m, B, {t, {c, I}}}]),
         [{{a, I}, _}, {{'EXIT', PA, {between, I}}, _}, {{c, I}, _}] = reports(3)
     end || I <- lists:seq(1, 20)],
    gen_tcp:close(S).

%% The same between two erlang_peer nodes: `P ! a, exit(P, between), P ! c' on the server
%% side, to a process of the client whose connection is suspended until all three are
%% written.
exit2_then_message_between_erlang_peers(Config) ->
    Self = self(),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{}),
    T = spawn_link(fun() -> process_flag(trap_exit, true), target_loop(Self) end),
    Sender = fun Loop(PT) ->
                     receive
                         {target, P} -> Self ! ready, Loop(P);
                         go -> PT ! a, exit(PT, between), PT ! c, Loop(PT)
                     end
             end,
    {Name, R} = fabric_peer_test_lib:remote(?config(server, Config), "sender", fun() -> Sender(none) end),
    fabric_peer:whereis(C, Name) ! {target, T},
    receive ready -> ok after 3000 -> ct:fail(no_ready) end,
    ok = sys:suspend(C),
    R ! go,
    %% (the three frames are written by the server while the client reads nothing)
    timer:sleep(200),
    ok = sys:resume(C),
    [{a, _}, {{'EXIT', PR, between}, _}, {c, _}] = reports(3),
    true = fabric_peer:is_proxy(PR),
    unlink(T),
    exit(T, kill),
    fabric_peer:close(C).

%% `link(B)' by A, then a message: B is linked to A's proxy when it gets the message (A is
%% a new process of the peer each time).
link_then_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    [begin
         burst(S, [{link, ?A + I, B}, {m, B, {t, {c, I}}}]),
         [{{c, I}, Links}] = reports(1),
         I = length(Links),
         true = lists:all(fun fabric_peer:is_proxy/1, Links)
     end || I <- lists:seq(1, 20)],
    gen_tcp:close(S).

%% `unlink(B)' by A, then a message: B is no longer linked when it gets the message.
unlink_then_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    [begin
         burst(S, [{link, ?A, B}, {m, B, {t, {linked, I}}}, {unlink, ?A, B}, {m, B, {t, {unlinked, I}}}]),
         [{{linked, I}, [_]}, {{unlinked, I}, []}] = reports(2)
     end || I <- lists:seq(1, 20)],
    gen_tcp:close(S).

%% A message, then the link signal of A's death (`link_exit'): in that order.
link_exit_after_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    burst(S, [{m, B, a}, {link_exit, ?A, B, kill}]),
    [{a, []}, {{'EXIT', PA, kill}, []}] = reports(2),
    true = is_pid(PA) andalso node(PA) =:= node(),
    gen_tcp:close(S).

%% A linked A sends a message and ends (its DEAD): B gets the message, then the exit signal.
dead_of_linked_after_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    burst(S, [{link, ?A, B}, {m, B, a}, {'DEAD', {pr, ?A}, {gone, 1}}]),
    [{a, [PA]}, {{'EXIT', PA, {gone, 1}}, []}] = reports(2),
    gen_tcp:close(S).

%% B monitors A; A sends a message and ends: the message, then the DOWN.
down_after_message(Config) ->
    {S, B, _} = peer_and_target(Config),
    PA = proxy_of_a(S, B),
    send(S, {m, B, {t, {monitor, {pr, ?A}}}}),
    receive {target, monitoring} -> ok after 3000 -> ct:fail(not_monitoring) end,
    burst(S, [{m, B, a}, {'DEAD', {pr, ?A}, {gone, 2}}]),
    [{a, _}, {{'DOWN', _, process, PA, {gone, 2}}, _}] = reports(2),
    gen_tcp:close(S).

%%% send side

%% `P ! a, exit(P, between), P ! c' from a process of the server to the raw peer's A: the
%% frames are written in that order.
exit_signal_between_messages_goes_out_in_place(Config) ->
    {S, B, T} = peer_and_target(Config),
    PA = proxy_of_a(S, B),
    [begin
         T ! {run, fun() -> PA ! {a, I}, exit(PA, {between, I}), PA ! {c, I} end},
         [{m, ?A, {t, {a, I}}}, {exit2, _, ?A, {t, {between, I}}}, {m, ?A, {t, {c, I}}}] = frames(S, 3)
     end || I <- lists:seq(1, 20)],
    gen_tcp:close(S).

%% The next N frames but heartbeats and acks.
frames(_, 0) -> [];
frames(S, N) ->
    case recv(S) of
        {heartbeat, _} -> frames(S, N);
        {error, _} = E -> ct:fail({no_frame, E});
        F -> [F | frames(S, N - 1)]
    end.

%%% send side: an exported process's last messages, then its DEAD

%% A fresh target of the server exported to the raw peer of socket S: its pid and its id
%% there.
exported(Config, S) ->
    {Name, T} = target(Config),
    Req = erlang:unique_integer([positive]),
    send(S, {whereis, Req, atom_to_binary(Name)}),
    {whereis_reply, Req, {pr, B}} = recv(S),
    {T, B}.

%% Exported process T sends each `{Id, Proxy, Msg}' of `Msgs' and ends with `Reason' at
%% once: the raw peer reads the messages (in order per proxy), then T's DEAD.
last_words(S, {T, B}, Msgs, Reason) ->
    T ! {run, fun() -> [P ! M || {_, P, M} <- Msgs], exit(Reason) end},
    Frames = frames(S, length(Msgs) + 1),
    {Got, Last} = lists:split(length(Msgs), Frames),
    [{'DEAD', {pr, B}, Reason}] =:= Last orelse ct:fail({dead_not_last, Frames}),
    Sent = [{m, Id, {t, M}} || {Id, _, M} <- Msgs],
    lists:sort(Got) =:= lists:sort(Sent) orelse ct:fail({messages, Got, Sent}),
    To = fun(Id, Fs) -> [F || {m, I, _} = F <- Fs, I =:= Id] end,
    [ct:fail({order, Id, Got}) || Id <- lists:usort([Id || {Id, _, _} <- Msgs]), To(Id, Got) =/= To(Id, Sent)],
    ok.

%% ?ROUNDS exported processes, each sending `Keys' messages through the proxies of the raw
%% peer's processes `Ids' and ending with `Reason(Round)'.
rounds(Config, Ids, Keys, Reason) ->
    {S, B, _} = peer_and_target(Config),
    Proxies = [{Id, proxy_of(S, B, Id)} || Id <- Ids],
    [ok = last_words(S, exported(Config, S), [{Id, P, {K, I}} || K <- Keys, {Id, P} <- Proxies],
                     Reason(I))
     || I <- lists:seq(1, ?ROUNDS)],
    gen_tcp:close(S).

last_message_then_dead_normal(Config) ->
    rounds(Config, [?A], [last], fun(_) -> normal end).

last_message_then_dead_with_a_reason(Config) ->
    rounds(Config, [?A], [last], fun(I) -> {gone, I} end).

%% Several messages through three proxies (of three processes of the peer), then the end.
messages_through_proxies_then_dead(Config) ->
    rounds(Config, [?A, ?A + 1, ?A + 2], [one, two, three], fun(I) -> {gone, I} end).

%% Exported process T sends `Msg' through proxy P and ends with `Reason' at once; P is
%% suspended first, so its DEAD waits: nothing is written for 300 ms.
held_by(S, T, P, Msg, Reason) ->
    T ! {run, fun() -> P ! Msg, exit(Reason) end},
    true = wait_until(fun() -> not is_process_alive(T) end),
    ok = recv_nothing(S, 300).

%% `held_by/5' with a new raw peer, the server's proxy PA of its process ?A and a new
%% exported process (id BT there).
held(Config, Msg, Reason) ->
    {S, B, _} = peer_and_target(Config),
    PA = proxy_of_a(S, B),
    {T, BT} = exported(Config, S),
    true = erlang:suspend_process(PA),
    ok = held_by(S, T, PA, Msg, Reason),
    {S, PA, BT}.

%% T's message waits in a suspended proxy: T's DEAD waits for it.
dead_waits_for_a_slow_proxy(Config) ->
    {S, PA, BT} = held(Config, slow, bye),
    true = erlang:resume_process(PA),
    [{m, ?A, slow}, {'DEAD', {pr, BT}, bye}] = frames(S, 2),
    gen_tcp:close(S).

%% Two exported processes end one after the other, the first's message in a suspended
%% proxy: the second's message goes, its DEAD waits behind the first's.
back_to_back_deads_keep_their_order(Config) ->
    {S, B, _} = peer_and_target(Config),
    PA = proxy_of(S, B, ?A),
    PB = proxy_of(S, B, ?A + 1),
    {T1, B1} = exported(Config, S),
    {T2, B2} = exported(Config, S),
    true = erlang:suspend_process(PA),
    ok = held_by(S, T1, PA, first, one),
    T2 ! {run, fun() -> PB ! second, exit(two) end},
    [{m, ?A + 1, second}] = frames(S, 1),
    true = wait_until(fun() -> not is_process_alive(T2) end),
    ok = recv_nothing(S, 300),
    true = erlang:resume_process(PA),
    [{m, ?A, first}, {'DEAD', {pr, B1}, one}, {'DEAD', {pr, B2}, two}] = frames(S, 3),
    gen_tcp:close(S).

%% The proxy a DEAD waits for is killed (the message in it is lost): the DEAD goes, and
%% the peer is told of the kill.
a_proxy_ending_lets_the_dead_go(Config) ->
    {S, PA, BT} = held(Config, lost, bye),
    exit(PA, kill),
    Frames = frames(S, 2),
    Dead = {'DEAD', {pr, BT}, bye},
    true = lists:member(Dead, Frames),
    [{exit2, _, ?A, kill}] = Frames -- [Dead],
    gen_tcp:close(S).

%% A hibernated proxy that T did not use answers the barrier (it wakes for it, and goes
%% back to sleep: a barrier is no use of the proxy).
hibernated_proxy_answers_the_barrier(Config) ->
    {S, B, _} = peer_and_target(Config),
    PA = proxy_of(S, B, ?A),
    PB = proxy_of(S, B, ?A + 1),
    {T, BT} = exported(Config, S),
    Hibernated = fun() ->
                         process_info(PB, current_function) =:= {current_function, {erlang, hibernate, 3}}
                 end,
    true = wait_until(Hibernated),
    T ! {run, fun() -> PA ! last, exit(bye) end},
    [{m, ?A, last}, {'DEAD', {pr, BT}, bye}] = frames(S, 2),
    true = wait_until(Hibernated),
    gen_tcp:close(S).

%% The same with an original (legacy) client: no frame of its own, the same order.
legacy_last_message_then_dead(Config) ->
    {ok, Srv} = fabric_peer:start_server(0, "secret", #{allow_legacy_auth => true}),
    S = fabric_peer_test_lib:legacy_login(fabric_peer:port(Srv), "secret"),
    Self = self(),
    [begin
         {Name, T} = fabric_peer_test_lib:remote(Srv, "legacy_target", fun() -> target_loop(Self) end),
         send(S, {m, Name, {t, {proxy, {pr, ?A}}}}),
         [{{proxy, PA}, _}] = reports(1),
         T ! {run, fun() -> PA ! {me, self()} end},
         [{m, ?A, {t, {me, {pr, BT}}}}] = frames(S, 1),
         T ! {run, fun() -> PA ! {last, I}, exit({bye, I}) end},
         [{m, ?A, {t, {last, I}}}, {'DEAD', {pr, BT}, {bye, I}}] = frames(S, 2)
     end || I <- lists:seq(1, ?ROUNDS)],
    gen_tcp:close(S),
    fabric_peer:stop_server(Srv),
    _ = Config,
    ok.

%% Between two erlang_peer nodes: X of the client sends a message to a process R of the
%% server that monitors X (through its proxy there) and ends at once. The server's
%% connection handles the message, then the DEAD (its calls of fabric_peer_protocol:frame/2,
%% traced: R alone does not tell, since a message the server delivers after the DEAD still
%% tends to reach R before the DOWN, which comes from the proxy once it has ended), and R
%% gets them in that order.
last_message_then_down_between_erlang_peers(Config) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{}),
    {Name, R} = target(Config),
    PR = fabric_peer:whereis(C, Name),
    1 = erlang:trace_pattern({fabric_peer_protocol, frame, 2}, true, []),
    [begin
         X = spawn(fun() ->
                           PR ! {monitor, self()},
                           receive go -> PR ! {last, I}, exit({bye, I}) end
                   end),
         receive {target, monitoring} -> ok after 3000 -> ct:fail(not_monitoring) end,
         {monitors, [{process, PX}]} = process_info(R, monitors),
         {ServerConn, _} = fabric_peer_registry:proxy_entry(PX),
         1 = erlang:trace(ServerConn, true, [call]),
         X ! go,
         [{{last, I}, _}, {{'DOWN', _, process, PX, {bye, I}}, _}] = reports(2),
         [{m, _, _}, {'DEAD', _, {bye, I}}] = handled(2),
         1 = erlang:trace(ServerConn, false, [call])
     end || I <- lists:seq(1, ?ROUNDS)],
    erlang:trace_pattern({fabric_peer_protocol, frame, 2}, false, []),
    exit(R, kill),
    fabric_peer:close(C).

%% The next N messages and DEADs a traced connection handled.
handled(0) -> [];
handled(N) ->
    receive
        {trace, _, call, {fabric_peer_protocol, frame, [Bin, _]}} ->
            case binary_to_term(Bin) of
                {m, _, _} = F -> [F | handled(N - 1)];
                {'DEAD', _, _} = F -> [F | handled(N - 1)];
                _ -> handled(N)
            end
    after 3000 -> ct:fail({not_handled, N})
    end.

%% Between two erlang_peer nodes (with `credit'), X's last messages to a process D of the
%% server that does not read wait for credit: X's DEAD does not wait for them (the
%% documented exception of docs/protocol.md 12.6: a monitor of X at the server gets the
%% DOWN while they wait), and they all arrive, in order, once D reads.
dead_is_not_held_by_credit(Config) ->
    N = 5000,
    Self = self(),
    {ok, C} = fabric_peer:connect("127.0.0.1", ?config(port, Config), "secret", #{}),
    {WName, _} = target(Config),
    {DName, D} = fabric_peer_test_lib:remote(?config(server, Config), "stuck",
                                             fun() -> receive go -> Self ! {read, read(N)} end end),
    PW = fabric_peer:whereis(C, WName),
    PD = fabric_peer:whereis(C, DName),
    X = spawn(fun() ->
                      PW ! {monitor, self()},
                      receive go -> [PD ! {n, I} || I <- lists:seq(1, N)], exit(bye) end
              end),
    receive {target, monitoring} -> ok after 3000 -> ct:fail(not_monitoring) end,
    X ! go,
    [{{'DOWN', _, process, _, bye}, _}] = reports(1),
    {message_queue_len, Waiting} = process_info(D, message_queue_len),
    true = Waiting < N,
    D ! go,
    receive {read, Got} -> Got =:= lists:seq(1, N) orelse ct:fail({read, length(Got)})
    after 10000 -> ct:fail(not_read)
    end,
    fabric_peer:close(C).

%% The next N messages `{n, I}', in the order they arrive.
read(0) -> [];
read(N) -> receive {n, I} -> [I | read(N - 1)] after 5000 -> [] end.
