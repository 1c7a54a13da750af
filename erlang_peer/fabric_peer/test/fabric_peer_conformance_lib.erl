%% The conformance corpus for the Erlang side (conformance/README.md): loading the case
%% files, and playing a case's steps on the real pure modules: fabric_peer_protocol (and
%% through it fabric_peer_session and fabric_peer_payload) for exchanges,
%% fabric_peer_server_hs / fabric_peer_client_hs for handshakes. This module only does
%% what the connection process does around them (the env, recording monitors, the
%% framing's length check) and renders the returned actions as observation lines.
%% Used by fabric_peer_conformance_SUITE.
-module(fabric_peer_conformance_lib).
-compile([export_all, nowarn_export_all]).

%%% ---------------------------------------------------------------- loading

cases_dir() -> filename:join(fabric_peer_test_lib:conformance_dir(), "cases").

%% [{Name, [{Key, Value}]}] of every conformance/cases/*.cases file, in file order.
load_cases() ->
    Files = lists:sort(filelib:wildcard(filename:join(cases_dir(), "*.cases"))),
    true = Files =/= [],
    lists:append([parse_cases(F) || F <- Files]).

load_cases(Kind) -> [C || {_, L} = C <- load_cases(), get(<<"kind">>, L) =:= Kind].

parse_cases(File) ->
    {ok, Bin} = file:read_file(File),
    Lines = [string:trim(L) || L <- binary:split(Bin, <<"\n">>, [global])],
    parse_lines([L || L <- Lines, L =/= <<>>, binary:first(L) =/= $#], none, []).

parse_lines([], none, Acc) -> lists:reverse(Acc);
parse_lines([L | Rest], Cur, Acc) ->
    {Key, Value} = case binary:split(L, <<" ">>) of
                       [K, V] -> {K, string:trim(V)};
                       [K] -> {K, <<>>}
                   end,
    case {Key, Cur} of
        {<<"case">>, none} -> parse_lines(Rest, {Value, []}, Acc);
        {<<"end">>, {Name, Ls}} -> parse_lines(Rest, none, [{Name, lists:reverse(Ls)} | Acc]);
        {_, {Name, Ls}} when Key =/= <<"case">>, Key =/= <<"end">> ->
            parse_lines(Rest, {Name, [{Key, Value} | Ls]}, Acc)
    end.

get(Key, Lines) ->
    case lists:keyfind(Key, 1, Lines) of
        {_, V} -> V;
        false -> error({missing_line, Key})
    end.

get(Key, Lines, Default) ->
    case lists:keyfind(Key, 1, Lines) of
        {_, V} -> V;
        false -> Default
    end.

hex(Key, Lines) -> binary:decode_hex(get(Key, Lines)).
words(Key, Lines) -> binary:split(get(Key, Lines, <<>>), <<" ">>, [global, trim_all]).
words(Key, Lines, Default) ->
    case lists:keymember(Key, 1, Lines) of
        true -> words(Key, Lines);
        false -> Default
    end.
int(Key, Lines, Default) -> binary_to_integer(get(Key, Lines, Default)).
opt_hex(<<"none">>) -> undefined;
opt_hex(H) -> binary:decode_hex(H).
term(Hex) -> binary_to_term(binary:decode_hex(Hex)).

%%% ---------------------------------------------------------------- exchanges on the real protocol

-define(STEPS, [<<"start">>, <<"send">>, <<"recv">>, <<"recv_raw">>, <<"exited">>, <<"whereis">>,
                <<"reply_whereis">>, <<"link">>, <<"unlink">>, <<"exit_signal">>, <<"heartbeat">>,
                <<"lost">>, <<"resume">>, <<"reconnect">>,
                %% flow (docs/protocol.md 11.8, 12): fabric_peer_conformance_flow
                <<"send_confirmed">>, <<"mailbox">>, <<"grant">>, <<"ack">>,
                %% route_exchange (docs/protocol.md 16)
                <<"whereis_node">>, <<"nodes">>, <<"reply_nodes">>, <<"nodeup">>, <<"nodedown">>]).
-define(OBS, [<<"out">>, <<"out_error">>, <<"event">>, <<"refused">>]).
%% Steps the Erlang peer has no entry point for: it carries links lazily and never writes
%% a link or unlink frame (docs/protocol.md 5.2). A case is played up to the first of them.
-define(NO_ENTRY_POINT, [<<"link">>, <<"unlink">>]).
%% Events the Erlang protocol has no form of: a heartbeat is only answered (the ack is
%% compared), an ack is only accepted.
-define(NO_EVENT, [<<"heartbeat">>, <<"heartbeat_ack">>]).
-define(SECRET, <<"conformance">>).
-define(SESSION, <<0:128>>).
-define(PEER, <<"conformance peer">>).

%% [{Step, [Observation]}] in case order: the common observation lines, and in a drift case
%% the Erlang peer's own (`erlang KEY VALUE'; the `python' lines are the other side's).
steps(L) -> steps(L, <<"erlang">>).

steps(L, Side) ->
    Own = fun({K, V}) when K =:= Side -> [list_to_tuple(binary:split(V, <<" ">>))];
             ({K, _}) when K =:= <<"python">>; K =:= <<"erlang">> -> [];
             (KV) -> [KV]
          end,
    lists:reverse(
      lists:foldl(fun({K, V}, Acc) ->
                          case {lists:member(K, ?STEPS), lists:member(K, ?OBS), Acc} of
                              {true, _, _} -> [{{K, V}, []} | Acc];
                              {_, true, [{S, Obs} | T]} -> [{S, Obs ++ [{K, V}]} | T];
                              _ -> Acc
                          end
                  end, [], lists:flatmap(Own, L))).

%% {Played, NotPlayed}: the steps before the first one the Erlang peer has no entry point
%% for, and the rest (empty when the whole case is played).
playable(Steps) ->
    lists:splitwith(fun({{K, _}, _}) -> not lists:member(K, ?NO_ENTRY_POINT) end, Steps).

%% The observation lines the Erlang side can produce (see ?NO_EVENT).
observable(Want) ->
    [O || {K, V} = O <- Want,
          not (K =:= <<"event">> andalso
               lists:member(hd(binary:split(V, <<" ">>)), ?NO_EVENT))].

new_state(L) ->
    case get(<<"kind">>, L) of
        <<"handshake_frames">> -> handshake_state(L);
        _ -> exchange_state(L)
    end.

%% Pids the test VM never gives a process (high serials), standing for local processes.
fake(N) -> fabric_peer_proto_lib:fake(N).

%% fabric_peer_protocol:new/2 and established/4 with the case's settings, as the server
%% lifecycle does after an authenticated handshake. The env answers what the connection
%% process would: proxies are the case's proxy_pid lines, the exited placeholder its
%% dead_pid, whereis/1 of a registered name a pid of its own (or, for a name the case's
%% application answers with reply_whereis, that pid).
exchange_state(L) ->
    Mode = binary_to_atom(get(<<"mode">>, L)),
    Feats = case Mode of
                legacy -> [];
                extended -> words(<<"features">>, L)
            end,
    Decl = maps:from_list([{binary_to_integer(I), term(H)} ||
                              {<<"proxy_pid">>, V} <- L, [I, H] <- [binary:split(V, <<" ">>)]]),
    Allowed = [binary_to_atom(N) || N <- words(<<"allowed">>, L)],
    Registered = [binary_to_atom(N) || N <- words(<<"registered">>, L, words(<<"allowed">>, L))],
    Names0 = maps:from_list([{N, fake(700000 + I)} || {N, I} <- lists:zip(Registered, lists:seq(1, length(Registered)))]),
    Names = maps:merge(Names0, whereis_answers(L)),
    Dead = case get(<<"dead_pid">>, L, <<"none">>) of <<"none">> -> fake(900002); H -> term(H) end,
    Role = binary_to_atom(get(<<"role">>, L, <<"server">>)),
    Routing = Role =:= server andalso lists:member(<<"route">>, Feats),
    Box = make_ref(),
    Env0 = #{self => fake(900000),
            spawn_proxy => fun(Id) ->
                                   case maps:find(Id, Decl) of
                                       {ok, Pid} -> Pid;
                                       error -> error({no_proxy_pid_line, Id})
                                   end
                           end,
            placeholder => fun() -> Dead end,
            signaller => fun() -> fake(900003) end,
            whereis => fun(N) -> maps:get(N, Names, undefined) end,
            policy => fun() -> undefined end,
            server_atoms_left => fun() -> 50000 end,
            spend_server_atoms => fun(_) -> ok end,
            mailbox => fabric_peer_conformance_flow:mailbox(Box)},
    %% a routing server's node table (fabric_peer_router:target/4): the case's client nodes
    Env = case Routing of
              true -> Env0#{route => fun(NodeBin) ->
                                             case route_target(NodeBin, L) of
                                                 reachable -> {ok, fake(600000)};
                                                 Other -> Other
                                             end
                                     end};
              false -> Env0
          end,
    RouteOpts = case Role of
                    server -> #{routing => Routing};
                    client -> #{}
                end,
    FlowOpts = fabric_peer_conformance_flow:opts(<<>>, L),
    {ok, O} = fabric_peer_opts:normalize(Role, ?SECRET,
                                         (maps:merge(RouteOpts, FlowOpts))#{allowed => Allowed, node => <<"us@conformance">>,
                                           features => Feats,
                                           max_frame => int(<<"max_frame">>, L, <<"67108864">>),
                                           max_errors => int(<<"max_errors">>, L, <<"20">>),
                                           error_window => int(<<"error_window">>, L, <<"200">>),
                                           max_proxies => int(<<"max_proxies">>, L, <<"100000">>),
                                           compress => proplists:get_value(<<"compress_messages">>, L) =:= <<"true">>}),
    Params = fabric_peer_conformance_flow:params(L, #{mode => Mode, features => Feats, peer_max => 67108864}),
    {[], P} = fabric_peer_protocol:established(Params, false, false, fabric_peer_protocol:new(O, Env)),
    #{kind => exchange, p => P, o => O, mode => Mode, feats => Feats, decl => Decl,
      rdecl => maps:from_list([{Pid, Id} || {Id, Pid} <- maps:to_list(Decl)]),
      rnames => maps:from_list([{Pid, N} || {N, Pid} <- maps:to_list(Names), is_pid(Pid)]),
      dead => Dead, exports => #{}, whereis_tags => #{}, held => #{},
      nodes_tags => #{}, route_asks => #{}, box => Box, confirms => [], confirm_refs => #{},
      replies => [binary_to_integer(R) || {<<"reply_whereis">>, V} <- L, [R, _] <- [binary:split(V, <<" ">>)]],
      lines => L, received => undefined}.

%% A client node of the case's routing server: `reachable' (route_nodes), `not_allowed'
%% (route_refused) or `none'.
route_target(Node, L) ->
    case {lists:member(Node, words(<<"route_nodes">>, L)), lists:member(Node, words(<<"route_refused">>, L))} of
        {true, _} -> reachable;
        {_, true} -> not_allowed;
        _ -> none
    end.

%% Names the case's application answers a whereis for: `event whereis_requested REQ NAME'
%% (or a `whereis_node_requested REQ NAME NODE' for our own node) followed later by
%% `reply_whereis REQ PID|undefined'.
whereis_answers(L) ->
    Asked = maps:from_list([{R, N} || {<<"event">>, V} <- L,
                                      [<<"whereis_requested">>, R, N] <- [binary:split(V, <<" ">>, [global])]]
                           ++ [{R, N} || {<<"event">>, V} <- L,
                                         [<<"whereis_node_requested">>, R, N, <<"us@conformance">>]
                                             <- [binary:split(V, <<" ">>, [global])]]),
    maps:from_list([{binary_to_atom(maps:get(R, Asked)), case A of <<"undefined">> -> undefined; _ -> term(A) end}
                    || {<<"reply_whereis">>, V} <- L, [R, A] <- [binary:split(V, <<" ">>)],
                       is_map_key(R, Asked)]).

%% One step: its observations as the Python runner groups them (a refusal, the events, then
%% the frames written).
step(K, V, #{kind := handshake} = St) -> hs_step(K, binary:split(V, <<" ">>, [global, trim_all]), St);
step(K, V, St0) ->
    flush_logs(),
    {Refused, Acts, Extra, St1} = do_step(K, binary:split(V, <<" ">>, [global, trim_all]), St0#{received := undefined}),
    {Events0, Outs, St2} = render(Acts, fabric_peer_conformance_flow:confirms(Acts, St1)),
    Events = Events0 ++ notice_events(Acts, St2),
    Logged = logged(),
    Closed = [{event, [<<"closed">>, C], none} || C <- Extra],
    {[{refused, C} || C <- Refused] ++ Events ++ Logged ++ Closed ++ Outs, St2}.

%% -> {Refusals, Actions, Close codes, State}
do_step(K, Args, St) when K =:= <<"send_confirmed">>; K =:= <<"mailbox">>; K =:= <<"grant">>;
                          K =:= <<"ack">> ->
    fabric_peer_conformance_flow:step(K, Args, St);
do_step(<<"send">>, [Kind, Dest0, Payload], #{p := P, decl := Decl} = St) ->
    Dest = case Kind of
               <<"name">> -> binary_to_atom(Dest0);
               <<"proxy">> -> maps:get(binary_to_integer(Dest0), Decl)
           end,
    {Reply, Acts, P1} = fabric_peer_protocol:send(Dest, term(Payload), P),
    Refused = case Reply of
                  ok -> [];
                  {error, {unsupported, _}} -> [<<"bad_payload">>];
                  {error, {limit, _}} -> [<<"limit">>];
                  {error, Other} -> error({send_refused, Other})
              end,
    {Refused, Acts, [], St#{p := P1}};
do_step(<<"recv">>, Hex, #{p := P} = St) ->
    Bin = case Hex of [H] -> binary:decode_hex(H); [] -> <<>> end,
    {Status, Acts, P1} = fabric_peer_protocol:frame(Bin, P),
    Received = try binary_to_term(Bin) catch error:badarg -> undefined end,
    {[], Acts, [<<"too_many_errors">> || Status =:= close], St#{p := P1, received := Received}};
do_step(<<"recv_raw">>, [Hex], #{p := P, o := O} = St) ->
    %% fabric_peer_conn's framing: a length over the limit ends the connection
    case fabric_peer_frame:take(binary:decode_hex(Hex), maps:get(max_frame, O)) of
        {error, {frame_too_large, Len}} ->
            {Acts, P1} = fabric_peer_protocol:too_large(Len, P),
            {[], Acts, [<<"frame_too_large">>], St#{p := P1}};
        more -> {[], [], [], St}
    end;
do_step(<<"exited">>, [PidHex, Reason], #{p := P, exports := E} = St) ->
    Pid = term(PidHex),
    case maps:find(Pid, E) of
        {ok, {_, Ref}} ->
            {Acts, P1} = fabric_peer_protocol:down(Ref, Pid, term(Reason), P),
            {[], Acts, [], St#{p := P1}};
        error -> {[], [], [], St}   % never exported: no monitor, nothing happens
    end;
do_step(<<"whereis">>, [Name], #{p := P, whereis_tags := T} = St) ->
    Tag = make_ref(),
    {Acts, P1} = fabric_peer_protocol:whereis(Name, {self(), Tag}, P),
    [Req] = [R || {send, ctrl, B} <- Acts, {whereis, R, _} <- [binary_to_term(B)]],
    {[], Acts, [], St#{p := P1, whereis_tags := T#{Tag => Req}}};
do_step(<<"reply_whereis">>, [Req, Answer], #{route_asks := A, p := P} = St) when is_map_key(Req, A) ->
    %% the other client's answer, through fabric_peer_route_conn
    {Tag, A1} = maps:take(Req, A),
    Result = case Answer of <<"undefined">> -> undefined; _ -> term(Answer) end,
    {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:whereis_answer(Tag, Result, P)),
    {[], Acts, [], St#{p := P1, route_asks := A1}};
do_step(<<"reply_whereis">>, [Req, _], #{held := H} = St) ->
    %% the Erlang peer answered when the request arrived (its env's whereis/1 gave the
    %% case's answer); the reply is shown here, where the Python application gives it
    {Bin, H1} = maps:take(binary_to_integer(Req), H),
    {[], [{send, ctrl, Bin}], [], St#{held := H1}};
do_step(<<"exit_signal">>, [PidHex, B, Reason], #{p := P, decl := Decl} = St) ->
    {Acts, P1} = fabric_peer_protocol:proxy_exit(maps:get(binary_to_integer(B), Decl), term(PidHex),
                                                 term(Reason), P),
    {[], Acts, [], St#{p := P1}};
do_step(<<"whereis_node">>, [Name, Node], #{p := P, whereis_tags := T} = St) ->
    Tag = make_ref(),
    {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:whereis_node(Name, Node, {self(), Tag}, P)),
    [Req] = [R || {send, ctrl, B} <- Acts, {whereis_node, R, _, _} <- [binary_to_term(B)]],
    {[], Acts, [], St#{p := P1, whereis_tags := T#{Tag => Req}}};
do_step(<<"nodes">>, [], #{p := P, nodes_tags := T} = St) ->
    Tag = make_ref(),
    {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:nodes({self(), Tag}, P)),
    [Req] = [R || {send, ctrl, B} <- Acts, {nodes, R} <- [binary_to_term(B)]],
    {[], Acts, [], St#{p := P1, nodes_tags := T#{Tag => Req}}};
do_step(<<"reply_nodes">>, [Req | Nodes], #{p := P} = St) ->
    {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:nodes_reply(binary_to_integer(Req), Nodes, P)),
    {[], Acts, [], St#{p := P1}};
do_step(Notice, [Node], #{p := P} = St) when Notice =:= <<"nodeup">>; Notice =:= <<"nodedown">> ->
    {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:notice({binary_to_atom(Notice), Node}, P)),
    {[], Acts, [], St#{p := P1}};
do_step(<<"heartbeat">>, [], #{p := P} = St) ->
    {Acts, P1} = fabric_peer_protocol:heartbeat(P),
    {[], Acts, [], St#{p := P1}};
do_step(<<"lost">>, [], #{p := P} = St) ->
    %% the socket is gone; the session is kept (fabric_peer_server: detached)
    {Acts, P1} = fabric_peer_protocol:lost({error, closed}, P),
    {[], Acts, [], St#{p := P1}};
do_step(<<"resume">>, [], #{p := P} = St) ->
    %% a new connection authenticates and resumes the session: the handshake is played by
    %% fabric_peer_client_hs against fabric_peer_server_hs, the kept session claimed as
    %% fabric_peer_server:session/4 does, then the kept protocol state is established again
    {Params, true} = resume_handshake(St, ?SESSION),
    {Acts, P1} = fabric_peer_protocol:established(Params, false, true, fabric_peer_protocol:detach(P)),
    {[], [{resumed, true} | Acts], [], St#{p := P1}};
do_step(<<"reconnect">>, [], #{lines := L} = St) ->
    %% the session asked for is not kept: the new connection is a new process with a new
    %% protocol state (fabric_peer_server:session/4), the old one's ids mean nothing to it
    {Params, false} = resume_handshake(St, none),
    #{p := P} = St1 = exchange_state(L),
    {Acts, P1} = fabric_peer_protocol:established(Params, false, false, P),
    {[], [{resumed, false} | Acts], [], St1#{p := P1}}.

%% A client of ours that accepted a received nodeup/nodedown (no error frame written) tells
%% its transport, as the Python core's NodeUp/NodeDown events do.
notice_events(Acts, #{received := {Notice, Node}}) when Notice =:= nodeup; Notice =:= nodedown ->
    case [x || {write, _} <- Acts] of
        [] -> [ev([atom_to_binary(Notice), Node])];
        _ -> []
    end;
notice_events(_, _) -> [].

%% The peer's new connection asks for ?SESSION; the server keeps `KeptSid'.
resume_handshake(#{o := SO0, feats := Feats}, KeptSid) ->
    SO = SO0#{features => Feats},
    {ok, CO} = fabric_peer_opts:normalize(client, ?SECRET, #{features => Feats, node => <<"peer@conformance">>}),
    {F1, CHs} = fabric_peer_client_hs:hello(CO, <<1:256>>),
    {send, F2, SHs} = fabric_peer_server_hs:hello(F1, SO, #{nonce => <<2:256>>, challenge => "unused"}),
    {send, F3, CHs1} = fabric_peer_client_hs:challenge(F2, CHs, ?SESSION, CO, ?PEER),
    {extended, Params, Asked} = fabric_peer_server_hs:response(F3, SHs, SO, ?PEER),
    Kept = lists:member(<<"session">>, Feats) andalso Asked =:= KeptSid,
    F4 = fabric_peer_server_hs:success(case Kept of true -> Asked; false -> <<3:128>> end, Kept, F3, SHs, SO),
    {established, _, ClientResumed} = fabric_peer_client_hs:auth(F4, CHs1, CO, ?PEER),
    same_resumed(Kept, ClientResumed),
    {Params, Kept}.

same_resumed(X, X) -> ok;
same_resumed(S, C) -> error({resumed, {server, S}, {client, C}}).

%% The actions of one step as observation lines. Monitors are started and recorded as
%% fabric_peer_conn:run/2 does (watch_export/3, watch_proxy/3).
render(Acts, St0) ->
    Discarded = [Pid || {discard_proxy, Pid} <- Acts],
    {Evs, Outs, St} =
        lists:foldl(fun(A, {E, O, S}) ->
                            {E1, O1, S1} = action(A, Discarded, S),
                            {E ++ E1, O ++ O1, S1}
                    end, {[], [], St0}, Acts),
    {Evs, Outs, St}.

action({monitor_export, Pid, Id}, _, #{p := P, exports := E} = St) ->
    Ref = make_ref(),
    {[], [], St#{p := fabric_peer_protocol:watch_export(Ref, Id, P), exports := E#{Pid => {Id, Ref}}}};
action({monitor_proxy, Pid, Id}, Discarded, #{p := P} = St) ->
    St1 = St#{p := fabric_peer_protocol:watch_proxy(make_ref(), Id, P)},
    %% a proxy started for a frame that was then dropped stood for nothing
    case lists:member(Pid, Discarded) of
        true -> {[], [], St1};
        false -> {[ev([<<"proxy_created">>, i(Id)])], [], St1}
    end;
action({deliver, Target, Msg}, _, St) ->
    fabric_peer_conformance_flow:delivered(Target, St),
    {substituted(Msg, St) ++ [ev([<<"message">> | dest(Target, St)], Msg)], [], St};
action({reply, {_, Tag}, Result}, _, #{confirm_refs := C} = St) when is_map_key(Tag, C) ->
    {[fabric_peer_conformance_flow:result(maps:get(Tag, C), Result)], [],
     St#{confirm_refs := maps:remove(Tag, C)}};
action({Timer, Ms}, _, St) when (Timer =:= grant_timer orelse Timer =:= ack_timer
                                 orelse Timer =:= send_timer), is_integer(Ms) ->
    %% a timer the connection would start: the case fires it with its `grant' / `ack' step
    {[], [], St};
action({control, Proxy, {barrier, N}}, _, #{p := P} = St) ->
    %% an exported process ended (fabric_peer_dead_order): a proxy here holds nothing, it
    %% answers at once, and the DEAD is written in this step as the cases expect
    {Acts, P1} = fabric_peer_protocol:barrier_passed(Proxy, N, P),
    render(Acts, St#{p := P1});
action({Kind, Proxy, Cmd}, _, #{rdecl := R} = St) when Kind =:= control; Kind =:= signal ->
    A = i(maps:get(Proxy, R)),
    E = case Cmd of
            {die, Reason} -> ev([<<"proxy_died">>, A], Reason);
            {link, BPid} -> ev([<<"link">>, A, export_id(BPid, St)]);
            {unlink, BPid} -> ev([<<"unlink">>, A, export_id(BPid, St)]);
            {exit, BPid, Reason} -> ev([<<"exit2">>, A, export_id(BPid, St)], Reason)
        end,
    {[E], [], St};
action({reply, {_, Tag}, Nodes}, _, #{nodes_tags := T} = St) when is_map_key(Tag, T) ->
    {Req, T1} = maps:take(Tag, T),
    {[ev([<<"nodes_replied">>, i(Req) | [atom_to_binary(N) || N <- Nodes]])], [], St#{nodes_tags := T1}};
action({route, {msg, _Conn, Name, Msg, _}}, _, #{received := {m, {Name, Node}, _}} = St) ->
    {[ev([<<"routed">>, atom_to_binary(Name), atom_to_binary(Node)], Msg)], [], St};
action({route, {nodes, Req}}, _, St) ->
    {[ev([<<"nodes_requested">>, i(Req)])], [], St};
action({route, {whereis_node, Tag, Name, Node}}, _, #{received := {whereis_node, Req, _, _}, lines := L,
                                                      p := P, route_asks := A} = St) ->
    %% fabric_peer_route_conn: a reachable client is asked, anything else is undefined at once
    case route_target(Node, L) of
        reachable ->
            {[ev([<<"whereis_node_requested">>, i(Req), Name, Node])], [],
             St#{route_asks := A#{i(Req) => Tag}}};
        _ ->
            {Acts, P1} = fabric_peer_route:finish(fabric_peer_route:whereis_answer(Tag, undefined, P)),
            render(Acts, St#{p := P1})
    end;
action({reply, {_, Tag}, Result}, _, #{whereis_tags := T, rdecl := R} = St) ->
    {Req, T1} = maps:take(Tag, T),
    Id = case Result of
             undefined -> <<"undefined">>;
             Pid when is_pid(Pid) -> i(maps:get(Pid, R))
         end,
    {[ev([<<"whereis_replied">>, i(Req), Id])], [], St#{whereis_tags := T1}};
action({send, _, Bin}, _, #{held := H, replies := Rs, received := Recv} = St) ->
    case {binary_to_term(Bin), Recv} of
        {{whereis_reply, Req, _}, {whereis, Req, Name}} ->
            case lists:member(Req, Rs) andalso not is_map_key(Req, H) of
                true -> {[ev([<<"whereis_requested">>, i(Req), Name])], [], St#{held := H#{Req => Bin}}};
                false -> {[], [{out, Bin}], St}
            end;
        {{whereis_reply, Req, _}, {whereis_node, Req, Name, Node}} ->
            %% our own node: asked of the application, as a plain whereis
            case lists:member(Req, Rs) andalso not is_map_key(Req, H) of
                true -> {[ev([<<"whereis_node_requested">>, i(Req), Name, Node])], [], St#{held := H#{Req => Bin}}};
                false -> {[], [{out, Bin}], St}
            end;
        _ -> {[], [{out, Bin}], St}
    end;
action({write, Bin}, _, St) ->
    {error, Code, _} = binary_to_term(Bin),
    {[], [{out_error, Code}], St};
action({resumed, true}, _, St) -> {[ev([<<"resumed">>])], [], St};
action({resumed, false}, _, St) -> {[ev([<<"not_resumed">>])], [], St};
action({Ignored, _}, _, St) when Ignored =:= forget_proxy; Ignored =:= discard_proxy;
                                 Ignored =:= demonitor ->
    {[], [], St}.

%% {pl, Id} markers of the received payload that the protocol resolved to the exited
%% placeholder of its env (docs/protocol.md 4.1): the wire term and the delivered one are
%% walked together.
substituted(Msg, #{received := {m, _, Wire}, dead := Dead}) -> placeholders(Wire, Msg, Dead);
substituted(_, _) -> [].

placeholders({pl, Id}, Dead, Dead) when is_integer(Id) -> [ev([<<"dead_pid_substituted">>, i(Id)])];
placeholders({t, W}, D, Dead) when is_tuple(W), is_tuple(D), tuple_size(W) =:= tuple_size(D) ->
    placeholders(tuple_to_list(W), tuple_to_list(D), Dead);
placeholders([W | Ws], [D | Ds], Dead) -> placeholders(W, D, Dead) ++ placeholders(Ws, Ds, Dead);
placeholders(_, _, _) -> [].

dest(Target, #{exports := E, rnames := N, received := Recv}) when is_pid(Target) ->
    case [Id || {Pid, {Id, _}} <- maps:to_list(E), Pid =:= Target] of
        [Id] -> [<<"id">>, i(Id)];
        [] ->
            Name = maps:get(Target, N),
            case Recv of
                {m, {Name, Node}, _} -> [<<"node">>, atom_to_binary(Name), atom_to_binary(Node)];
                _ -> [<<"name">>, atom_to_binary(Name)]
            end
    end;
dest({Name, Node}, _) -> [<<"node">>, atom_to_binary(Name), atom_to_binary(Node)].

export_id(Pid, #{exports := E}) -> {Id, _} = maps:get(Pid, E), i(Id).

i(N) -> integer_to_binary(N).
ev(Words) -> {event, Words, none}.
ev(Words, Term) -> {event, Words, Term}.

%%% ---------------------------------------------------------------- what the protocol logs

%% fabric_peer_protocol logs each dropped frame (with its code) and each error frame of
%% the peer once; these log events are how a drop is seen when no error frame is written
%% (a legacy peer). A logger handler sends them to the process that logged them.
-define(HANDLER, fabric_peer_conformance).

%% The other handlers print neither these nor the handshake steps' logs: the cases' bad
%% frames and refused handshakes are logged on purpose.
capture_logs() ->
    _ = logger:remove_handler(?HANDLER),
    ok = logger:add_handler(?HANDLER, ?MODULE, #{level => all}),
    ok = logger:set_module_level(fabric_peer_protocol, warning),
    [ok = logger:add_handler_filter(H, ?HANDLER, {fun quiet/2, []}) || H <- logger:get_handler_ids(), H =/= ?HANDLER],
    ok.

release_logs() ->
    _ = logger:unset_module_level(fabric_peer_protocol),
    _ = logger:remove_handler(?HANDLER),
    [_ = logger:remove_handler_filter(H, ?HANDLER) || H <- logger:get_handler_ids()],
    ok.

quiet(#{meta := #{mfa := {M, _, _}}} = Event, _) ->
    case lists:member(M, [fabric_peer_protocol, fabric_peer_names, fabric_peer_links, fabric_peer_route,
                          fabric_peer_server_hs, fabric_peer_client_hs]) of
        true -> stop;
        false -> Event
    end;
quiet(Event, _) -> Event.

%% logger handler callback: the report maps of fabric_peer_protocol (`what' names the
%% event)
log(#{msg := {report, #{what := What} = Report}, meta := #{mfa := {fabric_peer_protocol, _, _}, pid := Pid}}, _) ->
    Pid ! {?HANDLER, What, Report},
    ok;
log(_, _) -> ok.

flush_logs() ->
    receive {?HANDLER, _, _} -> flush_logs() after 0 -> ok end.

logged() ->
    receive
        {?HANDLER, frame_dropped, #{code := Code}} ->
            [ev([<<"dropped">>, atom_to_binary(Code)]) | logged()];
        {?HANDLER, peer_error, #{code := Code}} ->
            [ev([<<"peer_error">>, Code]) | logged()];
        {?HANDLER, _, _} -> logged()
    after 0 -> []
    end.

%%% ---------------------------------------------------------------- handshake frames

%% Legacy handshakes and refused first frames, played on fabric_peer_server_hs /
%% fabric_peer_client_hs with the case's random bytes, closing as the lifecycles do
%% (fabric_peer_server: a refused hello closes silently, a refused response gets
%% {auth, failed}; fabric_peer_client: a failure closes).
handshake_state(L) ->
    Role = binary_to_atom(get(<<"role">>, L)),
    {ok, O} = fabric_peer_opts:normalize(Role, hex(<<"secret">>, L),
                                         #{allow_legacy_auth => get(<<"allow_legacy_auth">>, L) =:= <<"true">>,
                                           node => <<"us@conformance">>}),
    #{kind => handshake, role => Role, o => O,
      random => [binary:decode_hex(H) || H <- words(<<"random">>, L)],
      hs => case Role of server -> await_hello; client -> idle end}.

hs_step(<<"start">>, [], #{role := client, hs := idle, random := [Nonce | R], o := O} = St) ->
    {F1, Hs} = fabric_peer_client_hs:hello(O, Nonce),
    {[{out, F1}], St#{random := R, hs := {await_challenge, Hs}}};
hs_step(<<"recv">>, [Hex], #{hs := State} = St) -> hs_recv(State, binary:decode_hex(Hex), St).

hs_recv(await_hello, F1, #{o := O, random := R} = St) ->
    {Challenge, Nonce} = case R of
                             [C] -> {C, <<0:256>>};
                             [C, N | _] -> {C, N}
                         end,
    Rand = #{challenge => binary_to_list(fabric_peer_handshake:hex(Challenge)), nonce => Nonce},
    case fabric_peer_server_hs:hello(F1, O, Rand) of
        {send, F2, Hs} -> {[{out, F2}], St#{hs := {await_response, Hs}}};
        {refuse, _} -> {auth_failed(), St#{hs := closed}}
    end;
hs_recv({await_response, Hs}, F3, #{o := O} = St) ->
    case fabric_peer_server_hs:response(F3, Hs, O, ?PEER) of
        {legacy, F4} -> {[ev([<<"established">>, <<"legacy">>]), {out, F4}], St#{hs := established}};
        {extended, _, _} -> error(extended_handshake_in_handshake_frames);
        failed -> {auth_failed() ++ [{out, fabric_peer_server_hs:failure()}], St#{hs := closed}}
    end;
hs_recv({await_challenge, Hs}, F2, #{o := O} = St) ->
    case fabric_peer_client_hs:challenge(F2, Hs, undefined, O, ?PEER) of
        {send, F3, Hs1} -> {[{out, F3}], St#{hs := {await_auth, Hs1}}};
        {fail, _} -> {auth_failed(), St#{hs := closed}}
    end;
hs_recv({await_auth, Hs}, F4, #{o := O} = St) ->
    case fabric_peer_client_hs:auth(F4, Hs, O, ?PEER) of
        {established, #{mode := legacy}, _} -> {[ev([<<"established">>, <<"legacy">>])], St#{hs := established}};
        {established, _, _} -> error(extended_handshake_in_handshake_frames);
        {fail, _} -> {auth_failed(), St#{hs := closed}}
    end.

auth_failed() -> [ev([<<"auth_failed">>]), ev([<<"closed">>, <<"auth_failed">>])].
