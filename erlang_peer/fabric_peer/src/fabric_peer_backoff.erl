%% @doc Reconnection delays of a client: capped exponential backoff with jitter.
-module(fabric_peer_backoff).

-export([delay/3]).

%% @doc The delay in ms before reconnection attempt `N' (0 for the first retry): a uniform
%% random delay in `[Cap/2, Cap]', where `Cap' doubles from `Min' with each attempt and
%% never exceeds `Max'. The jitter keeps many clients of one server from retrying in step.
-spec delay(non_neg_integer(), pos_integer(), pos_integer()) -> pos_integer().
delay(N, Min, Max) ->
    Cap = min(Max, Min bsl min(N, 20)),
    Cap div 2 + rand:uniform(max(1, Cap - Cap div 2)).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

bounds_test() ->
    %% Doubles from Min, never exceeds Max, never drops below half its cap (jitter).
    [begin
         Cap = min(80, 20 bsl N),
         D = delay(N, 20, 80),
         ?assert(D =< Cap andalso D >= Cap div 2 andalso D >= 1)
     end || N <- lists:seq(0, 40), _ <- lists:seq(1, 20)],
    ok.

doubling_test() ->
    %% the cap doubles per attempt: the largest delays seen over many draws show it
    Max = fun(N) -> lists:max([delay(N, 100, 100000) || _ <- lists:seq(1, 200)]) end,
    ?assert(Max(0) =< 100 andalso Max(0) > 50),
    ?assert(Max(3) =< 800 andalso Max(3) > 400),
    %% huge attempt numbers do not overflow the shift: the cap is Max
    ?assert(delay(1000000, 100, 30000) =< 30000).

tiny_bounds_test() ->
    %% Min = Max = 1 still gives a positive delay
    ?assertEqual([1], lists:usort([delay(N, 1, 1) || N <- lists:seq(0, 30)])).
-endif.
