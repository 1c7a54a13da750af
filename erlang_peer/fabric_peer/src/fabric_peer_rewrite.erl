%% @doc Payload rewriting both ways (docs/protocol.md section 4.1), as pure functions.
%%
%% Outbound: every tuple becomes `{t, T}', pids become `{pr, Id}' / `{pl, Id}' and
%% references `{r, Bin}' (decided by the caller's callback, which owns the id tables and
%% the reference translations: the peer's own bytes for one it sent us, `fabric_peer_refs'), and with
%% the matching features maps stay maps, non-byte bitstrings stay as they are, ports become
%% `{po, Bin}' and funs `{f, Arity, Bin}'; the inert handles of ports and funs received
%% (`{fabric_port, Bin}', `{fabric_fun, Arity, Bin}') go back as the same `{po, Bin}' /
%% `{f, Arity, Bin}'. A value the peer cannot carry is a local error raised before
%% anything is written.
%%
%% Inbound decoding is strict: an untagged tuple, a marker with a wrongly typed argument, a
%% raw pid/port/reference/fun or a value of a feature that was not agreed is `bad_payload'.
%% The `resolve' callback maps `{pr, Id}', `{pl, Id}', `{r, Bin}' and `{po, Bin}' to values.
-module(fabric_peer_rewrite).

-export([out/4, in/4, features/1]).
-export_type([features/0, out_fun/1, in_fun/1]).

-type features() :: #{binary() => true}.
-type out_fun(Acc) :: fun((pid() | reference() | function(), Acc) ->
                               {{pr | pl, pos_integer()} | {r, binary()} | {f, arity(), binary()}, Acc}).
-type in_fun(Acc) :: fun((pr | pl | r | po | f, term(), Acc) ->
                              {ok, term(), Acc} | {error, {atom(), term()}}).

%% Nesting bound for tuples, maps and list elements (list tails do not count): deeper input
%% is refused rather than risking runaway memory on a hostile frame of nested wrappers.
-define(MAX_DEPTH, 10000).

%% @doc The feature set as a map, for cheap membership tests.
-spec features([binary()]) -> features().
features(List) -> maps:from_list([{F, true} || F <- List]).

%% @doc Rewrite a term for the wire. Errors: `{unsupported, map | bitstring | port | 'fun'}'
%% when the peer did not agree on the feature, `{too_deep, Max}'. `PidFun' is called for
%% every pid, reference and fun (once the `funs' feature is agreed); it may refuse a pid by throwing `{rewrite, Why}': `out/4' then
%% returns `{error, Why}'.
-spec out(term(), features(), out_fun(Acc), Acc) -> {ok, term(), Acc} | {error, term()}.
out(Term, Features, PidFun, Acc) ->
    try
        {W, Acc1} = o(Term, Features, PidFun, Acc, 0),
        {ok, W, Acc1}
    catch throw:{rewrite, Why} -> {error, Why}
    end.

o(_, _, _, _, D) when D > ?MAX_DEPTH -> throw({rewrite, {too_deep, ?MAX_DEPTH}});
o(T, _, _, A, _) when is_atom(T); is_number(T); is_binary(T); T =:= [] -> {T, A};
o(T, F, _, A, _) when is_bitstring(T) -> need(<<"bitstrings">>, F, bitstring), {T, A};
o(L, F, P, A, D) when is_list(L) -> o_list(L, F, P, A, D, []);
o({fabric_fun, Arity, Bin}, F, _, A, _)
  when is_integer(Arity), Arity >= 0, Arity =< 255, is_binary(Bin), is_map_key(<<"funs">>, F) ->
    {{f, Arity, Bin}, A};
o({fabric_port, Bin}, F, _, A, _) when is_binary(Bin), is_map_key(<<"ports">>, F) ->
    {{po, Bin}, A};
%% pairs and triples (most messages) without a list in between (issue 15)
o({X, Y}, F, P, A, D) ->
    {X1, A1} = o(X, F, P, A, D + 1),
    {Y1, A2} = o(Y, F, P, A1, D + 1),
    {{t, {X1, Y1}}, A2};
o({X, Y, Z}, F, P, A, D) ->
    {X1, A1} = o(X, F, P, A, D + 1),
    {Y1, A2} = o(Y, F, P, A1, D + 1),
    {Z1, A3} = o(Z, F, P, A2, D + 1),
    {{t, {X1, Y1, Z1}}, A3};
o(T, F, P, A, D) when is_tuple(T) ->
    {Elems, A1} = o_elems(tuple_to_list(T), F, P, A, D + 1, []),
    {{t, list_to_tuple(Elems)}, A1};
o(Pid, _, P, A, _) when is_pid(Pid) -> P(Pid, A);
o(Ref, _, P, A, _) when is_reference(Ref) -> P(Ref, A);
o(M, F, P, A, D) when is_map(M) ->
    need(<<"maps">>, F, map),
    {Pairs, A1} = maps:fold(fun(K, V, {Acc, AccA}) ->
                                    {K1, AccA1} = o(K, F, P, AccA, D + 1),
                                    {V1, AccA2} = o(V, F, P, AccA1, D + 1),
                                    {[{K1, V1} | Acc], AccA2}
                            end, {[], A}, M),
    {maps:from_list(Pairs), A1};
o(Port, F, _, A, _) when is_port(Port) ->
    need(<<"ports">>, F, port), {{po, term_to_binary(Port)}, A};
o(Fun, F, P, A, _) when is_function(Fun) ->
    need(<<"funs">>, F, 'fun'),
    P(Fun, A).

o_list([H | T], F, P, A, D, Acc) ->
    {H1, A1} = o(H, F, P, A, D + 1),
    o_list(T, F, P, A1, D, [H1 | Acc]);
o_list([], _, _, A, _, Acc) -> {lists:reverse(Acc), A};
o_list(Tail, F, P, A, D, Acc) ->
    {T1, A1} = o(Tail, F, P, A, D + 1),
    {rev_onto(Acc, T1), A1}.

o_elems([], _, _, A, _, Acc) -> {lists:reverse(Acc), A};
o_elems([H | T], F, P, A, D, Acc) ->
    {H1, A1} = o(H, F, P, A, D),
    o_elems(T, F, P, A1, D, [H1 | Acc]).

need(Feature, F, What) ->
    case is_map_key(Feature, F) of
        true -> ok;
        false -> throw({rewrite, {unsupported, What}})
    end.

%% @doc Undo the rewriting of a received payload. Errors: `{bad_payload, Why}', or whatever
%% the resolver returns (e.g. `{limit, Why}' from a reference naming too many new atoms).
-spec in(term(), features(), in_fun(Acc), Acc) -> {ok, term(), Acc} | {error, {atom(), term()}}.
in(Wire, Features, Resolve, Acc) ->
    try
        {T, Acc1} = i(Wire, Features, Resolve, Acc, 0),
        {ok, T, Acc1}
    catch throw:{rewrite, Why} -> {error, Why}
    end.

i(_, _, _, _, D) when D > ?MAX_DEPTH -> bad({too_deep, ?MAX_DEPTH});
i(T, _, _, A, _) when is_atom(T); is_number(T); is_binary(T); T =:= [] -> {T, A};
i(T, F, _, A, _) when is_bitstring(T) -> need_in(<<"bitstrings">>, F, bitstring), {T, A};
i(L, F, R, A, D) when is_list(L) -> i_same(L, F, R, A, D, 0, L);
i({t, T}, F, R, A, D) when is_tuple(T) -> i_tuple(T, 1, F, R, A, D + 1);
i({pr, Id}, _, R, A, _) when is_integer(Id), Id > 0 -> resolve(R, pr, Id, A);
i({pl, Id}, _, R, A, _) when is_integer(Id) -> resolve(R, pl, Id, A);
i({r, Bin}, _, R, A, _) when is_binary(Bin) -> resolve(R, r, Bin, A);
i({po, Bin}, F, R, A, _) when is_binary(Bin), is_map_key(<<"ports">>, F) -> resolve(R, po, Bin, A);
i({f, Arity, Bin}, F, R, A, _)
  when is_integer(Arity), Arity >= 0, Arity =< 255, is_binary(Bin), is_map_key(<<"funs">>, F) ->
    resolve(R, f, {Arity, Bin}, A);
i(M, F, R, A, D) when is_map(M) ->
    need_in(<<"maps">>, F, map),
    {Pairs, Same, A1} =
        maps:fold(fun(K, V, {Acc, Same0, AccA}) ->
                          {K1, AccA1} = i(K, F, R, AccA, D + 1),
                          {V1, AccA2} = i(V, F, R, AccA1, D + 1),
                          {[{K1, V1} | Acc], Same0 andalso K1 =:= K andalso V1 =:= V, AccA2}
                  end, {[], true, A}, M),
    case Same of
        true -> {M, A1};
        false -> {maps:from_list(Pairs), A1}
    end;
i(T, _, _, _, _) when is_tuple(T) -> bad({bad_marker, element(1, T), tuple_size(T)});
i(T, _, _, _, _) when is_pid(T) -> bad(raw_pid);
i(T, _, _, _, _) when is_port(T) -> bad(raw_port);
i(T, _, _, _, _) when is_reference(T) -> bad(raw_reference);
i(T, _, _, _, _) when is_function(T) -> bad(raw_fun).

%% A received term is rewritten in place of the original only where something changes: an
%% unchanged list (or tuple, or map) is the original term itself, so a large payload of
%% plain data is neither copied nor held twice. (`=:=' on the same term is a pointer test.)
i_same([H | T], F, R, A, D, K, L) ->
    case i(H, F, R, A, D + 1) of
        {H, A1} -> i_same(T, F, R, A1, D, K + 1, L);
        {H1, A1} -> i_list(T, F, R, A1, D, [H1 | lists:reverse(lists:sublist(L, K))])
    end;
i_same([], _, _, A, _, _, L) -> {L, A};
i_same(Tail, F, R, A, D, K, L) ->
    case i(Tail, F, R, A, D + 1) of
        {Tail, A1} -> {L, A1};
        {T1, A1} -> {rev_onto(lists:reverse(lists:sublist(L, K)), T1), A1}
    end.

%% Elements from I on; the tuple itself while none changed.
i_tuple(T, I, _, _, A, _) when I > tuple_size(T) -> {T, A};
i_tuple(T, I, F, R, A, D) ->
    E = element(I, T),
    case i(E, F, R, A, D) of
        {E, A1} -> i_tuple(T, I + 1, F, R, A1, D);
        {E1, A1} when tuple_size(T) =< 8 ->
            %% a small tuple is copied per changed element, a large one once
            i_tuple(setelement(I, T, E1), I + 1, F, R, A1, D);
        {E1, A1} ->
            {Before, [_ | After]} = lists:split(I - 1, tuple_to_list(T)),
            {Elems, A2} = i_elems(After, F, R, A1, D, []),
            {list_to_tuple(Before ++ [E1 | Elems]), A2}
    end.

i_list([H | T], F, R, A, D, Acc) ->
    {H1, A1} = i(H, F, R, A, D + 1),
    i_list(T, F, R, A1, D, [H1 | Acc]);
i_list([], _, _, A, _, Acc) -> {lists:reverse(Acc), A};
i_list(Tail, F, R, A, D, Acc) ->
    {T1, A1} = i(Tail, F, R, A, D + 1),
    {rev_onto(Acc, T1), A1}.

i_elems([], _, _, A, _, Acc) -> {lists:reverse(Acc), A};
i_elems([H | T], F, R, A, D, Acc) ->
    {H1, A1} = i(H, F, R, A, D),
    i_elems(T, F, R, A1, D, [H1 | Acc]).

resolve(R, Kind, Arg, A) ->
    case R(Kind, Arg, A) of
        {ok, V, A1} -> {V, A1};
        {error, Why} -> throw({rewrite, Why})
    end.

need_in(Feature, F, What) ->
    case is_map_key(Feature, F) of
        true -> ok;
        false -> bad({not_agreed, What})
    end.

bad(Why) -> throw({rewrite, {bad_payload, Why}}).

rev_onto([], Tail) -> Tail;
rev_onto([H | T], Tail) -> rev_onto(T, [H | Tail]).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

all() -> features([<<"maps">>, <<"bitstrings">>, <<"ports">>, <<"funs">>]).

%% Out: pids numbered by a table kept in the accumulator, references as they are.
pid_out(Ref, A) when is_reference(Ref) -> {{r, term_to_binary(Ref)}, A};
pid_out(Fun, A) when is_function(Fun) ->
    {arity, Arity} = erlang:fun_info(Fun, arity),
    {{f, Arity, term_to_binary(Fun)}, A};
pid_out(Pid, #{ids := Ids, next := N} = A) ->
    case Ids of
        #{Pid := Id} -> {{pr, Id}, A};
        _ -> {{pr, N}, A#{ids := Ids#{Pid => N}, next := N + 1}}
    end.

%% In: {pr, Id} resolves to a tag, refs decode.
resolve_in(pr, Id, A) -> {ok, {remote, Id}, A};
resolve_in(pl, Id, A) -> {ok, {local, Id}, A};
resolve_in(r, Bin, A) ->
    case catch binary_to_term(Bin, [safe]) of
        R when is_reference(R) -> {ok, R, A};
        _ -> {error, {bad_payload, bad_reference}}
    end;
resolve_in(po, Bin, A) -> {ok, binary_to_term(Bin, [safe]), A};
resolve_in(f, {Arity, Bin}, A) -> {ok, {fabric_fun, Arity, Bin}, A}.

acc0() -> #{ids => #{}, next => 1}.

%% Vector 07's payload shape: every tuple wrapped, the sender's pid becomes {pr,1}.
legacy_shape_test() ->
    Ref = make_ref(),
    Msg = {self(), {payload, "abababa", <<1, 2, 3>>, 3.5, {nested, {deeper, [1, {x}], []}},
                    Ref, [1, 2 | improper]}},
    {ok, W, _} = out(Msg, #{}, fun pid_out/2, acc0()),
    ?assertMatch({t, {{pr, 1}, {t, {payload, "abababa", <<1, 2, 3>>, 3.5,
                                    {t, {nested, {t, {deeper, [1, {t, {x}}], []}}}},
                                    {r, _}, [1, 2 | improper]}}}}, W),
    {ok, Back, _} = in(W, #{}, fun resolve_in/3, #{}),
    ?assertEqual({{remote, 1}, {payload, "abababa", <<1, 2, 3>>, 3.5,
                                {nested, {deeper, [1, {x}], []}}, Ref, [1, 2 | improper]}}, Back).

same_pid_same_id_test() ->
    {ok, W, A} = out([self(), self()], #{}, fun pid_out/2, acc0()),
    ?assertEqual([{pr, 1}, {pr, 1}], W),
    ?assertEqual(2, maps:get(next, A)).

empty_tuple_test() ->
    {ok, W, _} = out({}, #{}, fun pid_out/2, acc0()),
    ?assertEqual({t, {}}, W),
    ?assertMatch({ok, {}, _}, in(W, #{}, fun resolve_in/3, #{})).

legacy_refuses_extended_values_test_() ->
    [Port | _] = erlang:ports(),
    [?_assertEqual({error, {unsupported, map}}, out(#{a => 1}, #{}, fun pid_out/2, acc0())),
     ?_assertEqual({error, {unsupported, bitstring}}, out([<<1:3>>], #{}, fun pid_out/2, acc0())),
     ?_assertEqual({error, {unsupported, port}}, out({Port}, #{}, fun pid_out/2, acc0())),
     ?_assertEqual({error, {unsupported, 'fun'}}, out(fun() -> ok end, #{}, fun pid_out/2, acc0()))].

extended_values_test() ->
    [Port | _] = erlang:ports(),
    Fun = fun lists:sort/1,
    {ok, W, _} = out(#{k => {v}, <<1:3>> => Port, f => Fun}, all(), fun pid_out/2, acc0()),
    ?assertMatch(#{k := {t, {v}}, <<1:3>> := {po, _}, f := {f, 1, _}}, W),
    {ok, Back, _} = in(W, all(), fun resolve_in/3, #{}),
    #{k := {v}, <<1:3>> := Port, f := {fabric_fun, 1, FunBin}} = Back,
    %% the fun handle goes back as the same {f, Arity, Bin}
    ?assertMatch({ok, {f, 1, FunBin}, _}, out({fabric_fun, 1, FunBin}, all(), fun pid_out/2, acc0())).

strict_decoding_test_() ->
    R = fun resolve_in/3,
    [?_assertMatch({error, {bad_payload, _}}, in({a, b}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({t, not_a_tuple}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({pr, 0}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({pr, x}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({r, 1}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({t, {{pr, 1}, #{a => 1}}}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({f, 0, {}}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({f, 0, <<>>}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in([<<1:1>>], #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in(self(), #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in({r, term_to_binary(x)}, #{}, R, #{})),
     ?_assertMatch({error, {bad_payload, _}}, in([1 | {a, b}], #{}, R, #{})),
     ?_assertMatch({ok, [1 | x], _}, in([1 | x], #{}, R, #{})),
     ?_assertMatch({ok, {local, 777}, _}, in({pl, 777}, #{}, R, #{}))].

%% Plain data comes back as the very same term (nothing copied); a changed element makes a
%% new container with the rest unchanged.
shares_unchanged_terms_test() ->
    R = fun resolve_in/3,
    L = lists:seq(1, 1000),
    {ok, L2, _} = in(L, #{}, R, #{}),
    ?assert(erts_debug:same(L, L2)),
    Inner = {a, lists:seq(1, 2), atom_to_binary(node())},
    {ok, T2, _} = in({t, Inner}, #{}, R, #{}),
    ?assert(erts_debug:same(Inner, T2)),
    ?assertEqual({ok, [1, 2, {x, {remote, 3}}, 4 | {remote, 5}], #{}},
                 in([1, 2, {t, {x, {pr, 3}}}, 4 | {pr, 5}], #{}, R, #{})),
    ?assertEqual({ok, {a, {remote, 1}, b, {local, 2}}, #{}},
                 in({t, {a, {pr, 1}, b, {pl, 2}}}, #{}, R, #{})),
    ?assertEqual({ok, [{remote, 1}], #{}}, in([{pr, 1}], #{}, R, #{})).

depth_bound_test() ->
    Deep = lists:foldl(fun(_, Acc) -> {t, {Acc}} end, x, lists:seq(1, 20000)),
    ?assertMatch({error, {bad_payload, {too_deep, _}}}, in(Deep, #{}, fun resolve_in/3, #{})).
-endif.
