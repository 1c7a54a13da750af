%% The acks feature between two erlang_peer ends (docs/protocol.md 11): through a relay on
%% 127.0.0.1 that cuts the connection every 100-300 ms, numbered messages sent both ways
%% with fabric_peer:send/2 and with `!' arrive exactly once and in order; what a session
%% cannot vouch for is reported when it ends; user sends wait (and time out) while the
%% outbox is full; peers that do not agree on acks keep the version 1 behaviour.
%%
%% The chaos case sends 4 x 5,000 messages; FUZZ_SECONDS above 20 (`make fuzz') scales it.
-module(fabric_peer_acks_SUITE).
-include_lib("common_test/include/ct.hrl").
-compile([export_all, nowarn_export_all]).

all() -> [chaos_both_directions_exactly_once_in_order, chaos_with_small_credit_windows,
          without_acks_agreed_nothing_changes,
          an_expired_session_reports_its_messages, overflow_of_bang_is_counted_and_reported,
          a_blocked_send_times_out_and_sends_nothing, a_clean_close_reports_nothing,
          a_raw_peer_sees_acks_only_when_it_accepts_them, confirmed_sends].

suite() -> [{timetrap, {minutes, 30}}].

init_per_suite(Config) ->
    ok = fabric_peer_test_lib:start_app(),
    logger:set_primary_config(level, error),
    Config.

end_per_suite(Config) -> Config.

%% With small windows credit holds the senders back all the time (docs/protocol.md 12).
-define(SMALL_CREDIT, #{credit_window => 64, credit_dest => 16, mailbox_high => 8,
                        grant_every => 8}).

init_per_testcase(Case, Config) ->
    fabric_peer_test_lib:flush(),
    Extra = case Case of
                chaos_with_small_credit_windows -> ?SMALL_CREDIT;
                _ -> #{}
            end,
    {ok, S} = fabric_peer:start_server(0, "secret", Extra#{session_timeout => 60000}),
    {ok, R} = fabric_peer_relay:start(fabric_peer:port(S)),
    [{server, S}, {relay, R} | Config].

end_per_testcase(_, Config) ->
    catch fabric_peer_relay:stop(?config(relay, Config)),
    fabric_peer:stop_server(?config(server, Config)),
    Config.

scale() ->
    case os:getenv("FUZZ_SECONDS") of
        false -> 1;
        V -> max(1, list_to_integer(V) div 20)
    end.

connect(Config, Opts) ->
    {ok, C} = fabric_peer:connect("127.0.0.1", fabric_peer_relay:port(?config(relay, Config)),
                                  "secret", maps:merge(#{reconnect_min => 20, reconnect_max => 200},
                                                       Opts)),
    C.

%%% chaos

%% A process checking numbered streams: per stream the last number, and anomalies (a
%% number not the next one: a duplicate, a reordering or a gap).
checker() -> checker(#{}).
checker(St) ->
    receive
        {report, From} -> From ! {checked, self(), St}, checker(St);
        {Stream, I} when is_atom(Stream), is_integer(I) ->
            {Last, Bad} = maps:get(Stream, St, {0, []}),
            Bad1 = case I =:= Last + 1 of
                       true -> Bad;
                       false when length(Bad) < 20 -> [{Last, I} | Bad];
                       false -> Bad
                   end,
            checker(St#{Stream => {max(Last, I), Bad1}});
        {start, Collector, N} ->
            %% the server side's two senders, to the client's collector (a proxy here)
            spawn_link(fun() -> send_loop(fun(I) -> fabric_peer:send(Collector, {s_send, I}) end, N) end),
            spawn_link(fun() -> send_loop(fun(I) -> Collector ! {s_bang, I}, ok end, N) end),
            checker(St)
    end.

%% Send 1..N, paced (about 1 ms per 2 messages); a send that fails sent nothing and is
%% repeated.
send_loop(Send, N) -> send_loop(Send, 1, N).
send_loop(_, I, N) when I > N -> ok;
send_loop(Send, I, N) ->
    case Send(I) of
        ok ->
            I rem 2 =:= 0 andalso timer:sleep(1),
            send_loop(Send, I + 1, N);
        {error, _} ->
            timer:sleep(5),
            send_loop(Send, I, N)
    end.

report(Checker) ->
    Checker ! {report, self()},
    receive {checked, Checker, St} -> St after 5000 -> ct:fail(checker_silent) end.

done(St, Streams, N) -> lists:all(fun(S) -> element(1, maps:get(S, St, {0, []})) >= N end, Streams).

chaos_both_directions_exactly_once_in_order(Config) ->
    chaos(Config, #{}).

%% The same with credit holding every sender back (both ends grant small windows): still
%% exactly once and in order, and every credit comes back once the streams are done.
chaos_with_small_credit_windows(Config) ->
    chaos(Config, ?SMALL_CREDIT).

chaos(Config, ClientOpts) ->
    N = 5000 * scale(),
    Sink = spawn(fun checker/0),
    Name = fabric_peer_test_lib:unique_name("sink"),
    true = register(Name, Sink),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    Collector = spawn(fun checker/0),
    C = connect(Config, ClientOpts),
    true = lists:member(<<"credit">>, maps:get(features, fabric_peer:info(C))),
    P = fabric_peer:whereis(C, Name),
    true = is_pid(P),
    ok = fabric_peer_relay:cut_every(?config(relay, Config), 100, 300),
    P ! {start, Collector, N},
    spawn_link(fun() -> send_loop(fun(I) -> fabric_peer:send(P, {c_send, I}) end, N) end),
    spawn_link(fun() -> send_loop(fun(I) -> P ! {c_bang, I}, ok end, N) end),
    %% one process mixing `!' and send/2 to the same proxy: one ordered stream
    spawn_link(fun() -> send_loop(fun(I) when I rem 2 =:= 0 -> P ! {c_mix, I}, ok;
                                     (I) -> fabric_peer:send(P, {c_mix, I})
                                  end, N) end),
    Deadline = erlang:monotonic_time(millisecond) + 120000 * scale(),
    wait_streams(Sink, [c_send, c_bang, c_mix], N, Deadline),
    wait_streams(Collector, [s_send, s_bang], N, Deadline),
    ok = fabric_peer_relay:cut_every(?config(relay, Config), 0, 0),
    Cuts = fabric_peer_relay:cuts(?config(relay, Config)),
    timer:sleep(300),                         % anything late (a duplicate) arrives by now
    In = report(Sink),
    Out = report(Collector),
    ct:pal("~b messages per stream, ~b cuts; client connects ~b; at the server ~0p, at the "
           "client ~0p", [N, Cuts, maps:get(connects, fabric_peer:info(C)), In, Out]),
    [{N, []} = maps:get(S, In) || S <- [c_send, c_bang, c_mix]],
    [{N, []} = maps:get(S, Out) || S <- [s_send, s_bang]],
    true = Cuts >= 3,
    #{connects := Connects} = fabric_peer:info(C),
    true = Connects >= 3,
    %% one session throughout: the proxy kept its identity
    P = fabric_peer:whereis(C, Name),
    %% the sinks read everything: all credit comes back, both ways
    true = fabric_peer_test_lib:wait_until(fun() -> credit_settled(fabric_peer:info(C)) end),
    fabric_peer:close(C).

credit_settled(#{credit_out := 0, credit_in := 0, credit_owed := 0}) -> true;
credit_settled(_) -> false.

wait_streams(Checker, Streams, N, Deadline) ->
    St = report(Checker),
    case done(St, Streams, N) of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({incomplete, St});
                false -> timer:sleep(100), wait_streams(Checker, Streams, N, Deadline)
            end
    end.

%%% negotiation

without_acks_agreed_nothing_changes(Config) ->
    Me = self(),
    Name = fabric_peer_test_lib:unique_name("plain"),
    true = register(Name, spawn(fun() -> receive M -> Me ! {got, M} end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{features => fabric_peer_opts:all_features() -- [<<"acks">>]}),
    #{features := F} = Info = fabric_peer:info(C),
    false = lists:member(<<"acks">>, F),
    true = lists:member(<<"session">>, F),
    false = is_map_key(sent, Info),
    ok = fabric_peer:send({C, Name}, hello),
    receive {got, hello} -> ok after 3000 -> ct:fail(not_delivered) end,
    %% the server side did not start counting either
    [false] = [is_map_key(sent, I) || I <- maps:get(conns, fabric_peer:info(?config(server, Config)))],
    fabric_peer:close(C).

%%% the end of a session

%% The client is cut off (the relay is gone), its session expires: every message it could
%% not have delivered is reported to its owner, in order, with its state.
an_expired_session_reports_its_messages(Config) ->
    Name = fabric_peer_test_lib:unique_name("slow"),
    true = register(Name, spawn(fun() -> receive stop -> ok end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{session_timeout => 500}),
    P = fabric_peer:whereis(C, Name),
    ok = fabric_peer_relay:stop(?config(relay, Config)),
    [ok = fabric_peer:send(P, {n, I}) || I <- lists:seq(1, 5)],
    [P ! {b, I} || I <- lists:seq(1, 5)],
    receive
        {fabric_undelivered, C, #{reason := session_expired, messages := Ms}} ->
            Expected = [{P, {n, I}} || I <- lists:seq(1, 5)] ++ [{P, {b, I}} || I <- lists:seq(1, 5)],
            Expected = [{D, M} || #{dest := D, msg := M} <- Ms],
            [unconfirmed] = lists:usort([S || #{state := S} <- Ms])
    after 5000 -> ct:fail(no_report)
    end,
    fabric_peer:close(C).

overflow_of_bang_is_counted_and_reported(Config) ->
    Name = fabric_peer_test_lib:unique_name("of"),
    true = register(Name, spawn(fun() -> receive stop -> ok end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{outbox_frames => 10, max_pending_messages => 20}),
    P = fabric_peer:whereis(C, Name),
    ok = fabric_peer_relay:stop(?config(relay, Config)),
    [P ! {b, I} || I <- lists:seq(1, 100)],
    true = fabric_peer_test_lib:wait_until(
             fun() -> maps:get(dropped_overflow, fabric_peer:info(C), 0) =:= 70 end),
    #{outbox := 10, pending := 20} = fabric_peer:info(C),
    fabric_peer:close(C),
    Reports = collect_reports(C),
    Overflow = [{D, M} || {overflow, Ms} <- Reports, #{dest := D, msg := M, state := unsent} <- Ms],
    Overflow = [{P, {b, I}} || I <- lists:seq(31, 100)],
    Closed = [M || {closed, Ms} <- Reports, #{msg := M} <- Ms],
    Closed = [{b, I} || I <- lists:seq(1, 30)].

collect_reports(C) ->
    receive {fabric_undelivered, C, #{reason := R, messages := Ms}} -> [{R, Ms} | collect_reports(C)]
    after 500 -> []
    end.

a_blocked_send_times_out_and_sends_nothing(Config) ->
    Name = fabric_peer_test_lib:unique_name("bl"),
    true = register(Name, spawn(fun() -> receive stop -> ok end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{outbox_frames => 2, send_timeout => 300}),
    P = fabric_peer:whereis(C, Name),
    ok = fabric_peer_relay:stop(?config(relay, Config)),
    ok = fabric_peer:send(P, one),
    ok = fabric_peer:send(P, two),
    T0 = erlang:monotonic_time(millisecond),
    {error, timeout} = fabric_peer:send(P, three),
    Waited = erlang:monotonic_time(millisecond) - T0,
    true = Waited >= 300,
    #{outbox := 2, pending := 0} = fabric_peer:info(C),
    fabric_peer:close(C),
    [{closed, Ms}] = collect_reports(C),
    [one, two] = [M || #{msg := M} <- Ms].

a_clean_close_reports_nothing(Config) ->
    Me = self(),
    Name = fabric_peer_test_lib:unique_name("cc"),
    true = register(Name, spawn(fun Loop() -> receive M -> Me ! {got, M}, Loop() end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{}),
    [ok = fabric_peer:send({C, Name}, I) || I <- lists:seq(1, 100)],
    fabric_peer:close(C),
    [] = collect_reports(C),
    [receive {got, I} -> ok after 3000 -> ct:fail({missing, I}) end || I <- lists:seq(1, 100)].

acks_until(_, N, N) -> [];
acks_until(S, N, Last) ->
    {ack, A} = fabric_peer_test_lib:recv(S),
    true = A > Last andalso A =< N,
    [A | acks_until(S, N, A)].

%% On the wire: a client that does not accept `acks' never gets an ack; one that does gets
%% cumulative acks, and a resume with a count out of range is refused.
a_raw_peer_sees_acks_only_when_it_accepts_them(Config) ->
    Name = fabric_peer_test_lib:unique_name("raw"),
    true = register(Name, spawn(fun Loop() -> receive _ -> Loop() end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    Port = fabric_peer:port(?config(server, Config)),
    {S1, Offer, _} = fabric_peer_test_lib:ext_login(Port, "secret"),
    true = lists:member(<<"acks">>, maps:get(<<"features">>, Offer)),
    [fabric_peer_test_lib:send(S1, {m, Name, I}) || I <- lists:seq(1, 100)],
    ok = fabric_peer_test_lib:recv_nothing(S1, 300),
    gen_tcp:close(S1),
    Feats = maps:get(<<"features">>, Offer) -- [<<"credit">>],
    {S2, _, Info} = fabric_peer_test_lib:ext_login(Port, "secret", #{<<"features">> => Feats}),
    [fabric_peer_test_lib:send(S2, {m, Name, I}) || I <- lists:seq(1, 70)],
    %% cumulative, each one advancing, the last one counting all 70 (within ack_delay)
    Acks = acks_until(S2, 70, 0),
    ct:pal("acks for 70 frames: ~w", [Acks]),
    true = length(Acks) =< 70,
    ok = fabric_peer_test_lib:recv_nothing(S2, 100),
    gen_tcp:close(S2),
    Sid = maps:get(<<"session">>, Info),
    %% resume with a count the server cannot have: refused, a new session
    {S3, _, Info3} = fabric_peer_test_lib:ext_login(Port, "secret",
                                                    #{<<"features">> => Feats, <<"resume">> => Sid,
                                                      <<"received">> => 5}),
    #{<<"resumed">> := false, <<"resume_refused">> := <<"not_resumable">>} = Info3,
    gen_tcp:close(S3).

%% fabric_peer:send_confirmed/3 (11.8): ok once delivered, the peer's reason otherwise,
%% not_supported without acks, and through cuts each one still answered once.
confirmed_sends(Config) ->
    Me = self(),
    Name = fabric_peer_test_lib:unique_name("conf"),
    true = register(Name, spawn(fun Loop() -> receive M -> Me ! {got, M}, Loop() end end)),
    ok = fabric_peer:allow(?config(server, Config), [Name]),
    C = connect(Config, #{}),
    ok = fabric_peer:send_confirmed({C, Name}, one),
    receive {got, one} -> ok after 3000 -> ct:fail(not_delivered) end,
    Gone = fabric_peer_test_lib:unique_name("gone"),
    ok = fabric_peer:allow(?config(server, Config), [Gone]),
    {error, noproc} = fabric_peer:send_confirmed({C, Gone}, x),
    {error, not_allowed} = fabric_peer:send_confirmed({C, not_allowed_here}, x),
    ok = fabric_peer_relay:cut_every(?config(relay, Config), 50, 100),
    [ok = fabric_peer:send_confirmed({C, Name}, {n, I}, 10000) || I <- lists:seq(1, 200)],
    ok = fabric_peer_relay:cut_every(?config(relay, Config), 0, 0),
    [receive {got, {n, I}} -> ok after 3000 -> ct:fail({missing, I}) end || I <- lists:seq(1, 200)],
    receive {got, Extra} -> ct:fail({duplicate, Extra}) after 200 -> ok end,
    fabric_peer:close(C),
    C2 = connect(Config, #{features => fabric_peer_opts:all_features() -- [<<"acks">>]}),
    {error, not_supported} = fabric_peer:send_confirmed({C2, Name}, x),
    fabric_peer:close(C2).
