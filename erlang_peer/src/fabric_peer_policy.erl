%% @doc Name policy (docs/protocol.md section 6): which registered names a peer may reach.
%%
%% Every way of addressing a process by name (an atom `Dest', `{Name, Node}', `whereis')
%% goes through `check/2'. A name must be in the user's allowed set, and system names are
%% refused even when listed unless the user forces them one by one.
-module(fabric_peer_policy).

-export([new/2, check/2, is_system_name/1, check_node/3, system_names/0]).
-export_type([policy/0]).

-opaque policy() :: #{allowed := #{atom() => true}, forced := #{atom() => true}}.

%% The names of section 6, item 2. Names starting with fabric_ or pyfabric_ are ours too.
-define(SYSTEM_NAMES,
        [rex, init, code_server, erl_prim_loader, net_kernel, net_sup, auth,
         global_name_server, global_group, global_group_check, application_controller,
         kernel_sup, kernel_safe_sup, kernel_refc, user, user_drv, standard_error,
         standard_error_sup, file_server_2, inet_db, erts_code_purger, erl_signal_server,
         logger, logger_sup, error_logger, timer_server, ssl_manager, erpc, socket_registry,
         erl_epmd, dist_util, os_mon, disk_log_server, pg, fabric_server]).

%% @doc A policy from the allowed names and the system names the user explicitly forces.
-spec new([atom()], [atom()]) -> policy().
new(Allowed, Forced) when is_list(Allowed), is_list(Forced) ->
    #{allowed => maps:from_list([{N, true} || N <- Allowed, is_atom(N)]),
      forced => maps:from_list([{N, true} || N <- Forced, is_atom(N)])}.

%% @doc `ok' when a peer may address `Name'.
-spec check(term(), policy()) -> ok | {error, not_allowed | system_name}.
check(Name, #{allowed := A, forced := F}) when is_atom(Name) ->
    case {is_map_key(Name, A), is_system_name(Name) andalso not is_map_key(Name, F)} of
        {_, true} -> {error, system_name};
        {true, false} -> ok;
        {false, false} -> {error, not_allowed}
    end;
check(_, _) -> {error, not_allowed}.

%% @doc System names are never reachable by name unless forced.
-spec is_system_name(atom()) -> boolean().
is_system_name(Name) when is_atom(Name) ->
    lists:member(Name, ?SYSTEM_NAMES) orelse
        begin
            Text = atom_to_binary(Name, utf8),
            prefix(<<"fabric_">>, Text) orelse prefix(<<"pyfabric_">>, Text)
        end.

%% @doc The fixed list of system names (without the fabric_/pyfabric_ prefixes).
-spec system_names() -> [atom()].
system_names() -> ?SYSTEM_NAMES.

%% @doc The node part of `{Name, Node}': `local' for this node (or the name we announce),
%% `{remote, Node}' for a node listed in `routable_nodes', otherwise refused.
-spec check_node(term(), [atom()], binary()) -> local | {remote, atom()} | {error, not_allowed}.
check_node(Node, Routable, Announced) when is_atom(Node) ->
    case Node =:= node() orelse atom_to_binary(Node, utf8) =:= Announced of
        true -> local;
        false ->
            case lists:member(Node, Routable) of
                true -> {remote, Node};
                false -> {error, not_allowed}
            end
    end;
check_node(_, _, _) -> {error, not_allowed}.

prefix(P, Text) -> binary:longest_common_prefix([P, Text]) =:= byte_size(P).

-ifdef(TEST).
-include_lib("eunit/include/eunit.hrl").

default_denies_everything_test() ->
    P = new([], []),
    ?assertEqual({error, not_allowed}, check(ping, P)),
    ?assertEqual({error, not_allowed}, check("ping", P)).

allowed_test() ->
    ?assertEqual(ok, check(ping, new([ping], []))).

system_names_refused_even_if_listed_test_() ->
    P = new([rex, init, fabric_rpc, pyfabric_x, fabric_server, logger], []),
    [?_assertEqual({error, system_name}, check(N, P))
     || N <- [rex, init, fabric_rpc, pyfabric_x, fabric_server, logger]].

forced_system_name_test() ->
    ?assertEqual(ok, check(rex, new([rex], [rex]))),
    ?assertEqual({error, not_allowed}, check(rex, new([], [rex]))).

node_check_test() ->
    ?assertEqual(local, check_node(node(), [], <<"x">>)),
    ?assertEqual(local, check_node('srv@vm', [], <<"srv@vm">>)),
    ?assertEqual({error, not_allowed}, check_node('srv@vm', [], <<"other">>)),
    ?assertEqual({remote, 'a@b'}, check_node('a@b', ['a@b'], <<"x">>)),
    ?assertEqual({error, not_allowed}, check_node("a@b", [], <<"x">>)).
-endif.
