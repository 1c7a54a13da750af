%% @doc The funs this side sent over one connection, so that a fun coming back is the fun
%% again (docs/protocol.md 4.1), as a pid of ours coming back is our pid again.
%%
%% A fun goes out as `{f, Arity, Bin}', `Bin' its external format. A receiver never makes
%% a fun from the network callable: an `{f, Arity, Bin}' is delivered as the inert handle
%% `{fabric_fun, Arity, Bin}', unless `Bin' is exactly the external format of a fun this
%% side sent on this connection, in which case it is that fun (nothing is decoded: the
%% table maps the bytes we sent to the fun we had). A forged `Bin' naming some local
%% function is therefore never more than a handle.
%%
%% Pure data, part of the connection's session (`fabric_peer_session', like the reference
%% table `fabric_peer_refs'). It keeps the ?MAX_FUNS funs sent most recently; an older one
%% coming back is the inert handle.
-module(fabric_peer_funs).

-export([new/0, out/2, in/3]).
-export_type([funs/0]).

-define(MAX_FUNS, 1024).

-record(funs, {
          by_bin = #{} :: #{binary() => function()},
          %% the external formats remembered, oldest first
          q = queue:new() :: queue:queue(binary())
         }).

-opaque funs() :: #funs{}.

%% @doc An empty table.
-spec new() -> funs().
new() -> #funs{}.

%% @doc The wire form of a fun sent, remembered.
-spec out(function(), funs()) -> {{f, arity(), binary()}, funs()}.
out(Fun, #funs{by_bin = B, q = Q} = Funs) ->
    {arity, Arity} = erlang:fun_info(Fun, arity),
    Bin = term_to_binary(Fun),
    case B of
        #{Bin := _} -> {{f, Arity, Bin}, Funs};
        _ ->
            Q1 = queue:in(Bin, Q),
            B1 = B#{Bin => Fun},
            Funs1 = case queue:len(Q1) > ?MAX_FUNS of
                        true ->
                            {{value, Old}, Q2} = queue:out(Q1),
                            #funs{by_bin = maps:remove(Old, B1), q = Q2};
                        false -> #funs{by_bin = B1, q = Q1}
                    end,
            {{f, Arity, Bin}, Funs1}
    end.

%% @doc The local value of a received `{f, Arity, Bin}': the fun we sent, or the inert handle.
-spec in(arity(), binary(), funs()) -> function() | {fabric_fun, arity(), binary()}.
in(Arity, Bin, #funs{by_bin = B}) ->
    case B of
        #{Bin := Fun} when is_function(Fun, Arity) -> Fun;
        _ -> {fabric_fun, Arity, Bin}
    end.

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

own_fun_comes_back_test() ->
    Fun = fun(X) -> X + 1 end,
    {{f, 1, Bin}, T} = out(Fun, new()),
    ?assertEqual(Fun, in(1, Bin, T)),
    %% the same bytes with another arity, or bytes never sent, stay handles
    ?assertEqual({fabric_fun, 2, Bin}, in(2, Bin, T)),
    Other = term_to_binary(fun erlang:halt/0),
    ?assertEqual({fabric_fun, 0, Other}, in(0, Other, T)).

bounded_test() ->
    {{f, 0, First}, T0} = out(fun() -> 0 end, new()),
    T = lists:foldl(fun(N, Acc) -> {_, Acc1} = out(fun() -> N end, Acc), Acc1 end,
                    T0, lists:seq(1, ?MAX_FUNS)),
    ?assertEqual(?MAX_FUNS, queue:len(T#funs.q)),
    ?assertEqual(map_size(T#funs.by_bin), queue:len(T#funs.q)),
    ?assertEqual({fabric_fun, 0, First}, in(0, First, T)).
-endif.
