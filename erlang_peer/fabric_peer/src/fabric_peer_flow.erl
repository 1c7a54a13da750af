%% @doc Per-connection fairness at a local process (README "Security"): a connection that
%% floods a process shared by many clients is slowed down, so that the process keeps up
%% and keeps serving the others.
%%
%% After delivering a message, a connection looks at the receiver's message queue. Over
%% ?MAX_BACKLOG messages, it waits (in steps of ?STEP ms, at most ?MAX_WAIT ms per message)
%% until the queue is back under the bound. While it waits it does not read its socket, so
%% TCP pushes back on the flooding peer; other connections are not slowed. A receiver that
%% does not drain at all costs the flooder at most ?MAX_WAIT ms per message.
%%
%% The queue is looked at after the first message to a receiver and then after every
%% ?CHECK_EVERY-th in a row to it (the bound is reached ?CHECK_EVERY messages later at
%% most): reading another process's queue length is a signal it must answer, which cost a
%% stream ~5 us per message while the receiver was busy (issue 15). After a proxy sent a
%% signal for the connection (`signalled/0'), the next delivery looks again, whoever the
%% receiver: fabric_peer_order_SUITE's unlink-then-message order was seen to depend on that
%% round trip (the receiver handles what it was sent before the connection goes on).
-module(fabric_peer_flow).

-export([deliver/2, signalled/0]).

-define(MAX_BACKLOG, 10000).
-define(STEP, 2).
-define(MAX_WAIT, 2000).
-define(CHECK_EVERY, 32).
%% (process dictionary of the delivering connection: {Receiver, deliveries since the check})
-define(LAST, fabric_peer_flow_last).

%% @doc Send `Msg' to `Target' (a pid or `{Name, Node}'), then wait while a local receiver's
%% queue is over the bound.
-spec deliver(pid() | {atom(), node()}, term()) -> ok.
deliver(Target, Msg) ->
    Target ! Msg,
    case is_pid(Target) andalso node(Target) =:= node() of
        true ->
            case get(?LAST) of
                {Target, N} when N < ?CHECK_EVERY - 1 ->
                    put(?LAST, {Target, N + 1}),
                    ok;
                _ ->
                    put(?LAST, {Target, 0}),
                    wait(Target, ?MAX_WAIT)
            end;
        false -> ok
    end.

%% @doc A proxy sent a link, unlink or exit signal for this connection: the next delivery
%% reads its receiver's queue.
-spec signalled() -> ok.
signalled() ->
    _ = erase(?LAST),
    ok.

wait(Pid, Left) ->
    case erlang:process_info(Pid, message_queue_len) of
        {message_queue_len, N} when N > ?MAX_BACKLOG, Left > 0 ->
            timer:sleep(?STEP),
            wait(Pid, Left - ?STEP);
        _ -> ok
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

delivers_test() ->
    ok = deliver(self(), hello),
    receive hello -> ok after 0 -> ?assert(false) end.

%% A receiver that does not drain holds the sender back, for a bounded time.
waits_for_a_full_queue_test() ->
    Pid = spawn(fun() -> receive go -> ok end end),
    [Pid ! x || _ <- lists:seq(1, 10001)],
    T0 = erlang:monotonic_time(millisecond),
    ok = deliver(Pid, y),
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 1000),
    exit(Pid, kill).

%% Deliveries in a row to one receiver look at its queue once per ?CHECK_EVERY: a queue
%% over the bound holds the sender back within that many messages.
checks_every_few_messages_test() ->
    Pid = spawn(fun() -> receive go -> ok end end),
    ok = deliver(Pid, first),                     % looked at: nearly empty
    [Pid ! x || _ <- lists:seq(1, 10001)],
    T0 = erlang:monotonic_time(millisecond),
    [ok = deliver(Pid, y) || _ <- lists:seq(1, ?CHECK_EVERY)],
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 1000),
    exit(Pid, kill).
-endif.
