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
%% The table lives in the connection process's dictionary (it is that connection's state,
%% like its pid tables, and survives a resumed session with the process). It keeps the
%% ?MAX_REFS most recent translations; an older one is forgotten, after which its local
%% reference goes back to the peer as a reference of this node (it no longer equals the
%% peer's original). Identity is per connection: the same foreign reference received on
%% two connections gives two local references.
-module(fabric_peer_refs).

-export([in/1, out/1, size/0]).

-define(MAX_REFS, 16384).
%% REFERENCE_EXT, NEW_REFERENCE_EXT, NEWER_REFERENCE_EXT
-define(REF_TAGS, #{101 => true, 114 => true, 90 => true}).
-define(Q, '$fabric_refs_q').

%% @doc The local value of a received `{r, Bin}': a reference, or `error' when `Bin' is not
%% a (well-formed, single) reference.
-spec in(binary()) -> {ok, reference()} | error.
in(<<131, Tag, _/binary>> = Bin) when is_map_key(Tag, ?REF_TAGS), byte_size(Bin) =< 4096 ->
    case fabric_peer_etf:decode(Bin, #{atoms_left => 0, max_decompressed => 4096}) of
        {ok, R, 0} when is_reference(R) -> {ok, R};
        {error, {limit, {new_atoms, 1}}} -> translate(Bin);
        _ -> error
    end;
in(_) -> error.

%% @doc The wire form of a reference: the peer's original for a translated one.
-spec out(reference()) -> binary().
out(Ref) ->
    case get({'$fabric_ref_out', Ref}) of
        undefined -> term_to_binary(Ref);
        Bin -> Bin
    end.

%% @doc How many translations this process holds.
-spec size() -> non_neg_integer().
size() ->
    case get(?Q) of
        undefined -> 0;
        Q -> queue:len(Q)
    end.

translate(Bin) ->
    case get({'$fabric_ref_in', Bin}) of
        undefined ->
            Ref = make_ref(),
            put({'$fabric_ref_in', Bin}, Ref),
            put({'$fabric_ref_out', Ref}, Bin),
            Q0 = case get(?Q) of undefined -> queue:new(); Q -> Q end,
            Q1 = queue:in(Bin, Q0),
            put(?Q, case queue:len(Q1) > ?MAX_REFS of
                        true ->
                            {{value, Old}, Q2} = queue:out(Q1),
                            erase({'$fabric_ref_out', erase({'$fabric_ref_in', Old})}),
                            Q2;
                        false -> Q1
                    end),
            {ok, Ref};
        Ref -> {ok, Ref}
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

foreign(N) ->
    Node = <<"py_", (integer_to_binary(erlang:unique_integer([positive])))/binary, "@nohost">>,
    <<131, 90, 0, 3, 119, (byte_size(Node)), Node/binary, 1:32, N:32, 2:32, 3:32>>.

own_references_decode_as_they_are_test() ->
    R = make_ref(),
    ?assertEqual({ok, R}, in(term_to_binary(R))),
    ?assertEqual(term_to_binary(R), out(R)).

foreign_references_create_no_atom_test() ->
    B = foreign(1),
    Atoms = erlang:system_info(atom_count),
    {ok, L} = in(B),
    ?assert(is_reference(L)),
    ?assertEqual(node(), node(L)),
    ?assertEqual({ok, L}, in(B)),
    ?assertEqual(B, out(L)),
    {ok, L2} = in(foreign(2)),
    ?assertNotEqual(L, L2),
    ?assertEqual(Atoms, erlang:system_info(atom_count)).

not_references_test_() ->
    [?_assertEqual(error, in(term_to_binary(x))),
     ?_assertEqual(error, in(<<131, 90>>)),
     ?_assertEqual(error, in(<<1, 2, 3>>)),
     ?_assertEqual(error, in(binary:copy(<<0>>, 5000))),
     %% a pid of an unknown node is not a reference
     ?_assertEqual(error, in(<<131, 88, 119, 5, "a@zzz", 0:32, 0:32, 1:32>>))].

bounded_test() ->
    Old = foreign(7),
    {ok, OldRef} = in(Old),
    [in(foreign(N)) || N <- lists:seq(1, 16384)],
    ?assert(size() =< 16384),
    ?assertEqual(term_to_binary(OldRef), out(OldRef)).
-endif.
