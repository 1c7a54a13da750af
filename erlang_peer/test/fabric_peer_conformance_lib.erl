%% The conformance corpus for the Erlang side (conformance/README.md): loading the case
%% files, and the model of one established connection that plays an exchange case's steps
%% with the pure modules (fabric_peer_rewrite, fabric_peer_etf, fabric_peer_frame,
%% fabric_peer_policy), doing the id-table bookkeeping fabric_peer_conn does around them.
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

%%% ---------------------------------------------------------------- exchange model

-define(STEPS, [<<"start">>, <<"send">>, <<"recv">>, <<"recv_raw">>, <<"exited">>, <<"whereis">>,
                <<"reply_whereis">>, <<"link">>, <<"unlink">>, <<"exit_signal">>, <<"heartbeat">>]).
-define(OBS, [<<"out">>, <<"out_error">>, <<"event">>, <<"refused">>]).

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

new_state(L) ->
    case get(<<"kind">>, L) of
        <<"handshake_frames">> -> handshake_state(L);
        _ -> exchange_state(L)
    end.

exchange_state(L) ->
    Mode = binary_to_atom(get(<<"mode">>, L)),
    Feats = case Mode of
                legacy -> [];
                extended -> words(<<"features">>, L)
            end,
    Proxies = maps:from_list([{binary_to_integer(I), term(H)} ||
                                 {<<"proxy_pid">>, V} <- L, [I, H] <- [binary:split(V, <<" ">>)]]),
    #{mode => Mode, feats => fabric_peer_rewrite:features(Feats),
      policy => fabric_peer_policy:new([binary_to_atom(N) || N <- words(<<"allowed">>, L)], []),
      %% the names a process is registered under on the receiver (default: every allowed one)
      registered => [binary_to_atom(N) || N <- words(<<"registered">>, L, words(<<"allowed">>, L))],
      max_frame => int(<<"max_frame">>, L, <<"67108864">>),
      max_proxies => int(<<"max_proxies">>, L, <<"100000">>),
      window => fabric_peer_frame:new_window(int(<<"max_errors">>, L, <<"20">>),
                                             int(<<"error_window">>, L, <<"200">>)),
      frames_in => 0, proxy_decl => Proxies,
      dead_pid => case get(<<"dead_pid">>, L, <<"none">>) of <<"none">> -> undefined; H -> term(H) end,
      exp_pid => #{}, exp_id => #{}, next_id => 1, prox_id => #{}, prox_pid => #{},
      next_req => 1, waiting => #{}, hb => 0, events => [], outs => [], refused => []}.

%% Observations are reported as the Python runner groups them: a refusal, the events, then
%% the frames written.
step(K, V, St0) ->
    St = do_step(K, binary:split(V, <<" ">>, [global, trim_all]), St0),
    #{refused := R, events := E, outs := O} = St,
    {[{refused, C} || C <- R] ++ lists:reverse(E) ++ lists:reverse(O), St}.

do_step(<<"start">>, [], #{kind := handshake, random := [Nonce | R]} = St) ->
    %% our client always opens with the extended hello (docs/protocol.md 3.1)
    ctrl_out(fabric_peer_handshake:extended_hello(Nonce), St#{random := R, hs := await_challenge});
do_step(<<"recv">>, [Hex], #{kind := handshake} = St) ->
    %% handshake frames never create atoms (fabric_peer_conn:hs_decode/2)
    Term = case fabric_peer_etf:decode(binary:decode_hex(Hex), #{atoms_left => 0, max_decompressed => 16384}) of
               {ok, T, _} -> T;
               {error, _} -> bad_frame
           end,
    handshake(maps:get(hs, St), Term, St);
do_step(<<"send">>, [Kind, Dest0, Payload], St) ->
    Dest = case Kind of
               <<"name">> -> binary_to_atom(Dest0);
               <<"proxy">> -> binary_to_integer(Dest0)
           end,
    case fabric_peer_rewrite:out(term(Payload), maps:get(feats, St), fun pid_out/2, St) of
        {ok, W, St1} -> message_out({m, Dest, W}, St1);
        {error, {unsupported, _}} -> St#{refused := [<<"bad_payload">>]}
    end;
do_step(<<"recv">>, [Hex], St) -> recv(binary:decode_hex(Hex), St);
do_step(<<"recv">>, [], St) -> recv(<<>>, St);
do_step(<<"recv_raw">>, [Hex], #{max_frame := Max} = St) ->
    case fabric_peer_frame:take(binary:decode_hex(Hex), Max) of
        {error, {frame_too_large, _}} ->
            St1 = event([<<"closed">>, <<"frame_too_large">>], St),
            error_out(frame_too_large, St1);
        more -> St
    end;
do_step(<<"exited">>, [PidHex, Reason], #{exp_pid := EP, exp_id := EI} = St) ->
    Pid = term(PidHex),
    case maps:take(Pid, EP) of
        {Id, EP1} -> ctrl_out({'DEAD', {pr, Id}, term(Reason)},
                              St#{exp_pid := EP1, exp_id := maps:remove(Id, EI)});
        error -> St
    end;
do_step(<<"whereis">>, [Name], #{next_req := R, waiting := W} = St) ->
    ctrl_out({whereis, R, Name}, St#{next_req := R + 1, waiting := W#{R => true}});
do_step(<<"reply_whereis">>, [Req, <<"undefined">>], St) ->
    ctrl_out({whereis_reply, binary_to_integer(Req), undefined}, St);
do_step(<<"reply_whereis">>, [Req, PidHex], St) ->
    {Id, St1} = export(term(PidHex), St),
    ctrl_out({whereis_reply, binary_to_integer(Req), {pr, Id}}, St1);
do_step(Tag, [PidHex, B], St) when Tag =:= <<"link">>; Tag =:= <<"unlink">> ->
    %% The Erlang peer itself carries links lazily (docs/protocol.md 5.2) and sends no link
    %% frame: this checks the frame's encoding and ids.
    {A, St1} = export(term(PidHex), St),
    ctrl_out({binary_to_atom(Tag), A, binary_to_integer(B)}, St1);
do_step(<<"exit_signal">>, [PidHex, B, Reason], St) ->
    {A, St1} = export(term(PidHex), St),
    {ok, W, St2} = fabric_peer_rewrite:out(term(Reason), maps:get(feats, St1), fun pid_out/2, St1),
    ctrl_out({exit2, A, binary_to_integer(B), W}, St2);
do_step(<<"heartbeat">>, [], #{hb := N} = St) ->
    ctrl_out({heartbeat, N}, St#{hb := N + 1}).

%% One received frame after the handshake, as fabric_peer_conn:established_frame/2 and
%% dispatch/2 handle it.
recv(Bin, #{frames_in := N, mode := Mode, feats := F, max_frame := Max} = St0) ->
    St = St0#{frames_in := N + 1},
    case fabric_peer_etf:decode(Bin, #{atoms_left => 1000, max_decompressed => Max}) of
        {error, {Code, _}} -> drop(Code, St);
        {ok, Term, _} -> dispatch(fabric_peer_frame:classify(Term, Mode, F), St)
    end.

dispatch({error, unknown_frame}, St) -> drop(unknown_frame, St);
dispatch({m, Dest, Payload}, St) ->
    case dest(Dest, St) of
        {ok, Words} ->
            case fabric_peer_rewrite:in(Payload, maps:get(feats, St), fun resolve/3, St) of
                {ok, Msg, St1} -> event([<<"message">> | Words], Msg, St1);
                {error, {Code, _}} -> drop(Code, St)
            end;
        ignore -> St;
        {error, Code} -> drop(Code, St)
    end;
dispatch({dead, Id, Reason}, #{prox_id := PI, mode := Mode} = St) ->
    case maps:take(Id, PI) of
        {Pid, PI1} ->
            R = case {Reason, Mode} of
                    {noproc, legacy} -> normal;
                    _ -> Reason
                end,
            event([<<"proxy_died">>, integer_to_binary(Id)], R,
                  St#{prox_id := PI1, prox_pid := maps:remove(Pid, maps:get(prox_pid, St))});
        error -> St
    end;
dispatch({r, Id}, St) ->
    {ok, _, St1} = resolve(pr, Id, St),
    St1;
dispatch({whereis, Req, NameBin}, St) ->
    Name = try binary_to_existing_atom(NameBin) catch error:badarg -> undefined end,
    case Name =/= undefined andalso fabric_peer_policy:check(Name, maps:get(policy, St)) of
        ok -> event([<<"whereis_requested">>, integer_to_binary(Req), NameBin], St);
        _ -> ctrl_out({whereis_reply, Req, undefined}, St)
    end;
dispatch({whereis_reply, Req, Result}, #{waiting := W} = St0) ->
    case maps:take(Req, W) of
        error -> St0;  % nobody waits for it: ignored
        {_, W1} ->
            St = St0#{waiting := W1},
            case Result of
                undefined -> event([<<"whereis_replied">>, integer_to_binary(Req), <<"undefined">>], St);
                {pr, Id} ->
                    {ok, _, St1} = resolve(pr, Id, St),
                    event([<<"whereis_replied">>, integer_to_binary(Req), integer_to_binary(Id)], St1)
            end
    end;
dispatch({Tag, A, B}, #{exp_id := EI} = St) when Tag =:= link; Tag =:= unlink ->
    case is_map_key(B, EI) of
        true ->
            {ok, _, St1} = resolve(pr, A, St),
            event([atom_to_binary(Tag), integer_to_binary(A), integer_to_binary(B)], St1);
        false -> St
    end;
dispatch({exit2, A, B, Reason0}, #{exp_id := EI} = St) ->
    case is_map_key(B, EI) of
        true ->
            case fabric_peer_rewrite:in(Reason0, maps:get(feats, St), fun resolve/3, St) of
                {ok, Reason, St1} ->
                    {ok, _, St2} = resolve(pr, A, St1),
                    event([<<"exit2">>, integer_to_binary(A), integer_to_binary(B)], Reason, St2);
                {error, {Code, _}} -> drop(Code, St)
            end;
        false -> St
    end;
dispatch({heartbeat, N}, St) ->
    ctrl_out({heartbeat_ack, N}, event([<<"heartbeat">>, integer_to_binary(N)], St));
dispatch({heartbeat_ack, N}, St) -> event([<<"heartbeat_ack">>, integer_to_binary(N)], St);
dispatch({error, Code, _Msg}, St) -> event([<<"peer_error">>, Code], St).

dest(Id, #{exp_id := EI, next_id := Next}) when is_integer(Id) ->
    case maps:is_key(Id, EI) of
        true -> {ok, [<<"id">>, integer_to_binary(Id)]};
        false when Id > 0, Id < Next -> ignore;
        false -> {error, unknown_id}
    end;
dest(Name, #{policy := P, registered := R}) when is_atom(Name) ->
    case fabric_peer_policy:check(Name, P) of
        %% fabric_peer_conn:resolve_name/2: no process under the name, the frame is dropped
        ok -> case lists:member(Name, R) of
                  true -> {ok, [<<"name">>, atom_to_binary(Name)]};
                  false -> ignore
              end;
        {error, _} -> {error, not_allowed}
    end;
dest({Name, Node}, #{policy := P}) ->
    case fabric_peer_policy:check_node(Node, [], <<"us@conformance">>) of
        local -> case fabric_peer_policy:check(Name, P) of
                     ok -> {ok, [<<"node">>, atom_to_binary(Name), atom_to_binary(Node)]};
                     {error, _} -> {error, not_allowed}
                 end;
        _ -> {error, not_allowed}
    end.

%% Section 9: count the error, tell an extended peer, close after too many.
drop(Code, #{frames_in := N, window := W} = St) ->
    St1 = error_out(Code, event([<<"dropped">>, atom_to_binary(Code)], St)),
    case fabric_peer_frame:note_error(N, W) of
        {ok, W1} -> St1#{window := W1};
        {close, W1} ->
            error_out(too_many_errors, event([<<"closed">>, <<"too_many_errors">>], St1#{window := W1}))
    end.

error_out(Code, #{mode := extended, feats := #{<<"error">> := true}, outs := O} = St) ->
    {error, CodeBin, _} = fabric_peer_frame:error_frame(Code, <<"conformance">>),
    St#{outs := [{out_error, CodeBin} | O]};
error_out(_, St) -> St.

event(Words, #{events := E} = St) -> St#{events := [{event, Words, none} | E]}.
event(Words, Term, #{events := E} = St) -> St#{events := [{event, Words, Term} | E]}.

%% m frames as fabric_peer_conn:emit_checked/3 writes them, to any peer: the original's
%% encoding, compressed when that is smaller (drift.cases: Python writes plain frames to
%% our peers, as docs/protocol.md 4.1 says our implementations default to).
message_out(Term, #{outs := O} = St) ->
    St#{outs := [{out, fabric_peer_frame:encode_message(Term)} | O]}.

ctrl_out(Term, #{outs := O} = St) ->
    St#{outs := [{out, fabric_peer_frame:encode_plain(Term)} | O]}.

%% Id tables (fabric_peer_conn: pid_out/2, resolve/3, export/2, proxy_for/2).
pid_out(Pid, #{prox_pid := PP} = St) ->
    case maps:find(Pid, PP) of
        {ok, Id} -> {{pl, Id}, St};
        error ->
            {Id, St1} = export(Pid, St),
            {{pr, Id}, St1}
    end.

export(Pid, #{exp_pid := EP, exp_id := EI, next_id := Next} = St) ->
    case maps:find(Pid, EP) of
        {ok, Id} -> {Id, St};
        error -> {Next, St#{exp_pid := EP#{Pid => Next}, exp_id := EI#{Next => Pid}, next_id := Next + 1}}
    end.

resolve(pr, Id, #{prox_id := PI, prox_pid := PP, proxy_decl := Decl, max_proxies := Max} = St) ->
    case maps:find(Id, PI) of
        {ok, Pid} -> {ok, Pid, St};
        error when map_size(PI) >= Max -> {error, {limit, {max_proxies, Max}}};
        error ->
            Pid = maps:get(Id, Decl),
            {ok, Pid, event([<<"proxy_created">>, integer_to_binary(Id)],
                            St#{prox_id := PI#{Id => Pid}, prox_pid := PP#{Pid => Id}})}
    end;
resolve(pl, Id, #{exp_id := EI, dead_pid := Dead} = St) ->
    case maps:find(Id, EI) of
        {ok, Pid} -> {ok, Pid, St};
        error -> {ok, Dead, event([<<"dead_pid_substituted">>, integer_to_binary(Id)], St)}
    end;
resolve(Kind, Bin, St) when Kind =:= r; Kind =:= po ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 100, max_decompressed => 4096}) of
        {ok, V, _} when Kind =:= r, is_reference(V) -> {ok, V, St};
        {ok, V, _} when Kind =:= po, is_port(V) -> {ok, V, St};
        _ -> {error, {bad_payload, Kind}}
    end.


%%% ---------------------------------------------------------------- handshake model

%% The legacy handshake and refused first frames, as fabric_peer_conn plays them with
%% fabric_peer_handshake (the extended handshake is checked by transcripts instead).
handshake_state(L) ->
    Role = binary_to_atom(get(<<"role">>, L)),
    #{kind => handshake, role => Role, secret => hex(<<"secret">>, L),
      allow => get(<<"allow_legacy_auth">>, L) =:= <<"true">>,
      random => [binary:decode_hex(H) || H <- words(<<"random">>, L)],
      hs => case Role of server -> await_hello; client -> idle end,
      events => [], outs => [], refused => []}.

handshake(await_hello, Term, #{random := [Bytes | R]} = St) ->
    case Term =/= bad_frame andalso fabric_peer_handshake:parse_hello(Term) of
        legacy ->
            C = binary_to_list(fabric_peer_handshake:hex(Bytes)),
            ctrl_out({challenge, C}, St#{random := R, hs := {await_response, C}});
        {extended, _, _} -> error(extended_hello_not_modelled);
        _ -> auth_failed(St)
    end;
handshake({await_response, C}, Term, #{allow := Allow, secret := Secret} = St) ->
    case {Allow, Term} of
        {true, {response, Resp}} ->
            case fabric_peer_handshake:check_legacy_response(C, Secret, Resp) of
                true -> event([<<"established">>, <<"legacy">>],
                              ctrl_out({auth, success}, St#{hs := established}));
                false -> auth_failed(ctrl_out({auth, failed}, St))
            end;
        _ -> auth_failed(ctrl_out({auth, failed}, St))
    end;
handshake(await_challenge, {challenge, C}, #{allow := Allow, secret := Secret} = St) ->
    case Allow andalso fabric_peer_handshake:parse_legacy_challenge(C) of
        {ok, Ch} -> ctrl_out({response, fabric_peer_handshake:legacy_response(Ch, Secret)},
                             St#{hs := await_auth});
        _ -> auth_failed(St)
    end;
handshake(await_auth, {auth, success}, St) ->
    event([<<"established">>, <<"legacy">>], St#{hs := established});
handshake(_, _, St) -> auth_failed(St).

auth_failed(St) ->
    event([<<"closed">>, <<"auth_failed">>], event([<<"auth_failed">>], St#{hs := closed})).
