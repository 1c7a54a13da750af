%% @doc References of the peer's nodes, translated per connection so that none creates an
%% atom here (README "Security", docs/protocol.md section 4.1).
%%
%% A reference crosses the connection as `{r, Bin}', `Bin' its external format, which names
%% the node that made it. Decoding a reference of a node this node has never heard of would
%% create that node's name as an atom: every Python peer has a random node name
%% (`py_xxxxxxxx@host'), so a long-running server would create one atom per client, for
%% ever, and use up its atom budget. Instead, such a reference becomes a fresh local
%% reference, remembered both ways for this connection: the same `Bin' gives the same local
%% reference, and the local reference goes back to the peer as the original `Bin' (a
%% `gen_server' reply tag, a monitor reference sent back, ...). A reference whose node is
%% known here (this node's own references coming back, or those of a node already known)
%% is decoded as it is.
%%
%% The table is pure data, part of the connection's session (`fabric_peer_session', like
%% its pid tables, so it survives a resumed session). It keeps the ?MAX_REFS most recent
%% translations; an older one is forgotten, after which its local reference goes back to
%% the peer as a reference of this node (it no longer equals the peer's original). Identity
%% is per connection: the same foreign reference received on two connections gives two
%% local references.
-module(fabric_peer_refs).

-export([new/0, in/2, out/2]).
-export_type([refs/0]).

-define(MAX_REFS, 16384).
%% REFERENCE_EXT, NEW_REFERENCE_EXT, NEWER_REFERENCE_EXT
-define(REF_TAGS, #{101 => true, 114 => true, 90 => true}).

-record(refs, {
          in = #{} :: #{binary() => reference()},
          out = #{} :: #{reference() => binary()},
          %% the foreign references translated, oldest first
          q = queue:new() :: queue:queue(binary())
         }).

-opaque refs() :: #refs{}.

%% @doc An empty table.
-spec new() -> refs().
new() -> #refs{}.

%% @doc The local value of a received `{r, Bin}': a reference, or `error' when `Bin' is not
%% a (well-formed, single) reference.
-spec in(binary(), refs()) -> {ok, reference(), refs()} | error.
in(<<131, Tag, _/binary>> = Bin, Refs) when is_map_key(Tag, ?REF_TAGS), byte_size(Bin) =< 4096 ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0, max_decompressed => 4096}) of
        {ok, R, 0} when is_reference(R) -> {ok, R, Refs};
        {error, {limit, {new_atoms, 1}}} -> translate(Bin, Refs);
        _ -> error
    end;
in(_, _) -> error.

%% @doc The wire form of a reference: the peer's original for a translated one.
-spec out(reference(), refs()) -> binary().
out(Ref, #refs{out = Out}) ->
    case Out of
        #{Ref := Bin} -> Bin;
        _ -> term_to_binary(Ref)
    end.

translate(Bin, #refs{in = In} = Refs) ->
    case In of
        #{Bin := Ref} -> {ok, Ref, Refs};
        _ -> Ref = make_ref(), {ok, Ref, remember(Bin, Ref, Refs)}
    end.

remember(Bin, Ref, #refs{in = In, out = Out, q = Q}) ->
    Q1 = queue:in(Bin, Q),
    In1 = In#{Bin => Ref},
    Out1 = Out#{Ref => Bin},
    case queue:len(Q1) > ?MAX_REFS of
        true ->
            {{value, Old}, Q2} = queue:out(Q1),
            {OldRef, In2} = maps:take(Old, In1),
            #refs{in = In2, out = maps:remove(OldRef, Out1), q = Q2};
        false -> #refs{in = In1, out = Out1, q = Q1}
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

%% How many translations the table holds.
count(#refs{q = Q}) -> queue:len(Q).

foreign(N) ->
    Node = <<"py_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@nohost">>,
    <<131, 90, 0, 3, 119, (byte_size(Node)), Node/binary, 1:32, N:32, 2:32, 3:32>>.

own_references_decode_as_they_are_test() ->
    R = make_ref(),
    T = new(),
    ?assertEqual({ok, R, T}, in(term_to_binary(R), T)),
    ?assertEqual(term_to_binary(R), out(R, T)),
    ?assertEqual(0, count(T)).

foreign_references_create_no_atom_test() ->
    B = foreign(1),
    Atoms = erlang:system_info(atom_count),
    {ok, L, T1} = in(B, new()),
    ?assert(is_reference(L)),
    ?assertEqual(node(), node(L)),
    ?assertEqual({ok, L, T1}, in(B, T1)),
    ?assertEqual(B, out(L, T1)),
    {ok, L2, T2} = in(foreign(2), T1),
    ?assertNotEqual(L, L2),
    ?assertEqual(2, count(T2)),
    ?assertEqual(B, out(L, T2)),
    ?assertEqual(Atoms, erlang:system_info(atom_count)).

%% the same foreign reference in two tables (two connections) gives two local references
identity_is_per_table_test() ->
    B = foreign(3),
    {ok, L1, _} = in(B, new()),
    {ok, L2, _} = in(B, new()),
    ?assertNotEqual(L1, L2).

not_references_test_() ->
    T = new(),
    [?_assertEqual(error, in(term_to_binary(x), T)),
     ?_assertEqual(error, in(<<131, 90>>, T)),
     ?_assertEqual(error, in(<<1, 2, 3>>, T)),
     ?_assertEqual(error, in(binary:copy(<<0>>, 5000), T)),
     %% a pid of an unknown node is not a reference
     ?_assertEqual(error, in(<<131, 88, 119, 5, "a@zzz", 0:32, 0:32, 1:32>>, T))].

bounded_test() ->
    Old = foreign(7),
    {ok, OldRef, T0} = in(Old, new()),
    T = lists:foldl(fun(N, Acc) -> {ok, _, Acc1} = in(foreign(N), Acc), Acc1 end,
                    T0, lists:seq(1, 16384)),
    ?assertEqual(16384, count(T)),
    ?assertEqual(term_to_binary(OldRef), out(OldRef, T)),
    %% forgotten: the same bytes now give a new local reference
    {ok, Again, _} = in(Old, T),
    ?assertNotEqual(OldRef, Again).
-endif.
