%% The `flow' kind of the conformance corpus (conformance/cases/credit.cases) for the Erlang
%% runner: the steps and keys fabric_peer_conformance_lib hands over to this module.
-module(fabric_peer_conformance_flow).
-compile([export_all, nowarn_export_all]).
-import(fabric_peer_conformance_lib, [words/2, words/3, term/1, i/1, ev/1, observable/1]).

%% The `flow' kind (conformance/README.md; docs/protocol.md 11.8, 12): an exchange with
%% `acks' / `credit', played on the same protocol. What the runtime of a case does (the
%% README's "runtime of a case") is what fabric_peer_conn does around the protocol: a
%% message is delivered into its process's mailbox (a `deliver' action, after the
%% protocol's call, as fabric_peer_conn:run/2 does), and the env's `mailbox' fun (as
%% fabric_peer_conn's backlog/1) tells the protocol how many messages that mailbox holds.
%% Mailbox lengths are kept in the process dictionary under the case's own reference.

%% Our options (`Prefix' <<>>) or the peer's (<<"peer_">>) among the flow keys of a case.
-define(FLOW_OPTIONS, [<<"credit_window">>, <<"credit_bytes">>, <<"credit_dest">>, <<"mailbox_high">>,
                       <<"grant_every">>, <<"ack_every">>, <<"max_confirms">>]).

opts(Prefix, L) ->
    maps:from_list([{binary_to_atom(K), binary_to_integer(V)}
                    || K <- ?FLOW_OPTIONS, {_, V} <- [lists:keyfind(<<Prefix/binary, K/binary>>, 1, L)]]).

%% The handshake's parameters with `credit': the windows the peer announced (its
%% `peer_credit_*' lines, else the defaults of docs/protocol.md 13.2, which both
%% implementations share), as fabric_peer_handshake gives them to the connection.
params(L, Params) ->
    case lists:member(<<"credit">>, words(<<"features">>, L, [])) of
        true ->
            Feats = [<<"acks">>, <<"credit">>, <<"session">>],
            {ok, Peer} = fabric_peer_opts:normalize(client, <<"conformance">>, (opts(<<"peer_">>, L))#{features => Feats}),
            Params#{peer_credit => fabric_peer_flowctl:windows(Peer)};
        false -> Params
    end.

mailbox(Box) ->
    fun(Pid) -> case get({Box, Pid}) of undefined -> 0; N -> N end end.

delivered(Pid, #{box := Box}) when is_pid(Pid) ->
    put({Box, Pid}, (mailbox(Box))(Pid) + 1);
delivered(_, _) -> ok.

%% The confirmed sends issued (`send_confirmed'), oldest first, are matched with the `mc'
%% frames we write, in order: the reply of a `Ref' is then shown as `event result REF'.
confirms(Acts, #{confirms := [_ | _]} = St) ->
    Refs = [Ref || {send, _, Bin} <- Acts, {mc, Ref, _, _} <- [binary_to_term(Bin)]],
    lists:foldl(fun(Ref, #{confirms := [Tag | Tags], confirm_refs := C} = Acc) ->
                        Acc#{confirms := Tags, confirm_refs := C#{Tag => Ref}}
                end, St, Refs);
confirms(_, St) -> St.

result(Ref, ok) -> ev([<<"result">>, i(Ref), <<"ok">>]);
result(Ref, {error, Code}) -> ev([<<"result">>, i(Ref), atom_to_binary(Code)]).

step(<<"send_confirmed">>, [Kind, Dest0, Payload], #{p := P, decl := Decl, confirms := Cs} = St) ->
    Dest = case Kind of
               <<"name">> -> binary_to_atom(Dest0);
               <<"proxy">> -> maps:get(binary_to_integer(Dest0), Decl)
           end,
    Tag = make_ref(),
    case fabric_peer_protocol:send_confirmed(Dest, term(Payload), {self(), Tag}, P) of
        {wait, Acts, P1} -> {[], Acts, [], St#{p := P1, confirms := Cs ++ [Tag]}};
        %% refused locally, nothing written: without `acks' the Erlang API says
        %% not_supported where the Python core raises unknown_frame (the frame is unknown)
        {{error, not_supported}, Acts, P1} -> {[<<"unknown_frame">>], Acts, [], St#{p := P1}};
        {{error, Other}, _, _} -> error({send_confirmed_refused, Other})
    end;
step(<<"mailbox">>, [Name, Len], #{p := P, box := Box, rnames := R} = St) ->
    %% that mailbox now holds Len messages (a name's process; the case's runtime never
    %% fills an export's); then the owed mailboxes are checked, as at delivery
    [Pid] = [Pid || {Pid, N} <- maps:to_list(R), atom_to_binary(N) =:= Name],
    put({Box, Pid}, binary_to_integer(Len)),
    {Acts, P1} = fabric_peer_flowctl:recheck(P),
    {[], Acts, [], St#{p := P1}};
step(<<"grant">>, [], #{p := P} = St) ->
    %% the grant_delay timer fires (fabric_peer_conn: fabric_grant_due)
    {Acts, P1} = fabric_peer_protocol:grant_due(P),
    {[], Acts, [], St#{p := P1}};
step(<<"ack">>, [], #{p := P} = St) ->
    %% the ack_delay timer fires (fabric_peer_conn: fabric_ack_due)
    {Acts, P1} = fabric_peer_protocol:ack_due(P),
    {[], Acts, [], St#{p := P1}}.

%% The observation lines of a flow step the Erlang side can produce: besides observable/1,
%% a message to a name with no process. The Erlang protocol resolves a name when the frame
%% arrives (its env's whereis/1) and drops such a message there (its credit returned at
%% once, an `mc' answered noproc: both compared); the Python core hands it to its runtime,
%% which drops it, so the case has a delivery line for it that has no Erlang form.
observable(Want, L) ->
    Registered = words(<<"registered">>, L, words(<<"allowed">>, L)),
    [O || {K, V} = O <- observable(Want),
          not (K =:= <<"event">> andalso
               case binary:split(V, <<" ">>, [global]) of
                   [<<"message">>, <<"name">>, N, _] -> not lists:member(N, Registered);
                   _ -> false
               end)].

