%% Signal order across a connection: between one pair of processes, signals (messages, exit
%% signals, links, unlinks, DOWN) arrive in the order they were sent, as in Erlang
%% (docs/protocol.md 5.2, "Order"). On the receiving side the connection delivers messages
%% itself while a proxy sends the signals that must come from the remote process's stand-in:
%% a later message must not overtake such a signal. Most cases are a raw extended peer
%% (this test process, process 7 of its own id space) writing its frames in one TCP write, so
%% the server's connection handles them in one event; one is two erlang_peer nodes with the
%% receiving connection suspended while the frames pile up.
-module(fabric_peer_order_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

-import(fabric_peer_test_lib, [send/2, recv/1, ext_login/2]).

%% the raw peer's own process, as it names it on the wire ({pr, ?A})
-define(A, 7).

all() -> [{group, receive_side}, {group, send_side}].

groups() ->
    [{receive_side, [], [exit2_then_message, exit2_then_message_between_erlang_peers,
                         link_then_message, unlink_then_message, link_exit_after_message,
                         dead_of_linked_after_message, down_after_message]},
     %% (not here: an exported process sending through a proxy and ending at once, whose DEAD
     %% is often written before its message, docs/protocol.md 12.6 "Ordering")
     {send_side, [], [exit_signal_between_messages_goes_out_in_place]}].

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
proxy_of_a(S, B) ->
    send(S, {m, B, {t, {proxy, {pr, ?A}}}}),
    [{{proxy, PA}, _}] = reports(1),
    true = fabric_peer:is_proxy(PA),
    PA.

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
