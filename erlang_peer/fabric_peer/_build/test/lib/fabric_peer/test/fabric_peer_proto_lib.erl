%% Helpers of the EUnit tests that drive fabric_peer_protocol directly (no process, no
%% socket): made-up pids, the connection's env, an established protocol state, a received
%% frame, and what the resulting actions wrote or answered.
-module(fabric_peer_proto_lib).

-export([fake/1, env/0, proto/3, frame/2, written/1, errors/1, replies/1]).

%% @doc A pid of this node that no process has (`<0.N.M>'), to stand for proxies and
%% local processes.
fake(N) -> list_to_pid(lists:flatten(io_lib:format("<0.~b.~b>", [N rem 32768, N div 32768]))).

%% @doc The connection's env: proxies and helpers as made-up pids, no registered names.
env() ->
    #{self => fake(900000),
      spawn_proxy => fun(Id) -> fake(800000 + Id) end,
      placeholder => fun() -> fake(900002) end,
      signaller => fun() -> fake(900003) end,
      whereis => fun(_) -> undefined end,
      policy => fun() -> undefined end,
      server_atoms_left => fun() -> 1000 end,
      spend_server_atoms => fun(_) -> ok end}.

%% @doc A protocol state of `Role' (options `Extra') established in extended mode with
%% features `Feats'.
proto(Role, Extra, Feats) ->
    {ok, O} = fabric_peer_opts:normalize(Role, "secret", Extra),
    P0 = fabric_peer_protocol:new(O#{ref => make_ref()}, env()),
    {_, P} = fabric_peer_protocol:established(#{mode => extended, features => Feats},
                                              false, false, P0),
    P.

%% @doc `Term' received as a frame.
frame(Term, P) -> fabric_peer_protocol:frame(term_to_binary(Term), P).

%% @doc The frames the actions send, decoded.
written(Acts) -> [binary_to_term(B) || {send, _, B} <- Acts].
%% @doc The codes of the error frames the actions write.
errors(Acts) -> [C || {write, B} <- Acts, {error, C, _} <- [binary_to_term(B)]].
%% @doc The answers the actions give to callers.
replies(Acts) -> [R || {reply, _, R} <- Acts].
