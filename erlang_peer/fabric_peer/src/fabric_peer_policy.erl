%% @doc Name policy (docs/protocol.md section 6): which registered names a peer may reach.
%%
%% Every way of addressing a process by name (an atom `Dest', `{Name, Node}', `whereis')
%% goes through `check/2'. A name must be in the user's allowed set, and system names are
%% refused even when listed unless the user forces them one by one.
%%
%% System names are structural, not only a list that goes stale with each OTP release: a
%% name is a system name when the process registered under it belongs to an application
%% of Erlang/OTP itself (kernel, stdlib, ssl, ...: every application of the OTP
%% installation, read once from its `installed_application_versions'), plus the fixed list
%% below for the runtime's processes that belong to no application (init, the code purger,
%% the logger, ...) and the names starting with fabric_ or pyfabric_ (ours).
%%
%% Remote exit signals and links (`signals_refused/2'): the server option
%% `refuse_remote_exits' (`false' by default, `true' for every process, or a list of
%% registered names) makes a server refuse the peer's `exit2' and `link' frames aimed at those processes, so that
%% being reachable by name does not also mean being killable by any authenticated peer.
-module(fabric_peer_policy).

-export([new/2, check/2, check_node/3, screen/3]).
-export_type([policy/0]).

-opaque policy() :: #{allowed := #{atom() => true}, forced := #{atom() => true}}.

%% The names of section 6, item 2, for processes outside any application (and, for an
%% older OTP, a few more). Names starting with fabric_ or pyfabric_ are ours too.
-define(SYSTEM_NAMES,
        [rex, init, code_server, erl_prim_loader, net_kernel, net_sup, auth,
         global_name_server, global_group, global_group_check, application_controller,
         kernel_sup, kernel_safe_sup, kernel_refc, user, user_drv, standard_error,
         standard_error_sup, file_server_2, inet_db, erts_code_purger, erl_signal_server,
         logger, logger_sup, error_logger, timer_server, ssl_manager, erpc, socket_registry,
         erl_epmd, dist_util, os_mon, disk_log_server, pg, fabric_server, logger_proxy,
         logger_handler_watcher, logger_std_h_default]).
%% When the OTP installation has no installed_application_versions (a stripped release):
-define(OTP_APPS, [kernel, stdlib, sasl, compiler, crypto, public_key, ssl, inets, asn1,
                   mnesia, os_mon, runtime_tools, tools, observer, ssh, xmerl, syntax_tools,
                   parsetools, eldap, ftp, tftp, snmp, diameter, megaco, odbc, wx,
                   common_test, eunit, debugger, reltool, et, dialyzer, edoc, erl_interface,
                   jinterface, os_mon, otp_mibs]).

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
        end orelse otp_process(erlang:whereis(Name)).

otp_process(Pid) when is_pid(Pid) ->
    case application:get_application(Pid) of
        {ok, App} -> is_map_key(App, otp_applications_set());
        undefined -> false
    end;
otp_process(_) -> false.

otp_applications_set() ->
    case persistent_term:get({?MODULE, otp_apps}, undefined) of
        undefined ->
            Set = maps:from_list([{A, true} || A <- read_otp_applications()]),
            persistent_term:put({?MODULE, otp_apps}, Set),
            Set;
        Set -> Set
    end.

read_otp_applications() ->
    File = filename:join([code:root_dir(), "releases", erlang:system_info(otp_release),
                          "installed_application_versions"]),
    case file:read_file(File) of
        {ok, Text} ->
            Apps = [binary_to_atom(hd(binary:split(L, <<"-">>)), utf8)
                    || L <- binary:split(Text, <<"\n">>, [global, trim_all])],
            lists:usort(Apps ++ ?OTP_APPS);
        {error, _} -> ?OTP_APPS
    end.

%% @doc A classified frame as it is, or `{refused, Why}' for a `link' or `exit2' frame to an
%% exported process (`Exported(Id)': `{ok, Pid}' or `error') that the server option
%% `refuse_remote_exits' protects.
-spec screen(T, fun((integer()) -> {ok, pid()} | error), map()) -> T | {refused, term()}
              when T :: term().
screen({link, _, B} = F, Exported, O) -> screen(link, B, F, Exported, O);
screen({exit2, _, B, _} = F, Exported, O) -> screen(exit2, B, F, Exported, O);
screen({link_exit, _, B, _} = F, Exported, O) -> screen(link_exit, B, F, Exported, O);
screen(F, _, _) -> F.

screen(Kind, B, F, Exported, #{refuse_remote_exits := R}) when R =/= false ->
    case Exported(B) of
        {ok, Pid} ->
            case signals_refused(Pid, R) of
                true -> {refused, {Kind, refused_by_refuse_remote_exits}};
                false -> F
            end;
        error -> F
    end;
screen(_, _, F, _, _) -> F.

%% @doc True when remote exit signals and links to `Pid' are refused under the server
%% option `refuse_remote_exits' (`true', `false' or registered names).
-spec signals_refused(pid(), boolean() | [atom()]) -> boolean().
signals_refused(_, false) -> false;
signals_refused(_, true) -> true;
signals_refused(Pid, Names) when is_list(Names), node(Pid) =:= node() ->
    case erlang:process_info(Pid, registered_name) of
        {registered_name, N} -> lists:member(N, Names);
        _ -> false
    end;
signals_refused(_, _) -> false.

%% @doc The node part of `{Name, Node}': `local' for this node (or the name we announce),
%% `{remote, Node}' for a node listed in `routable_nodes', otherwise refused.
-spec check_node(term(), [atom()], binary()) -> local | {remote, atom()} | {error, not_allowed}.
%% a node that is no atom here, as its name: only our own announced name (it cannot be one
%% of `Routable', which are atoms)
check_node(Node, _, Announced) when is_binary(Node) ->
    case Node =:= Announced of
        true -> local;
        false -> {error, not_allowed}
    end;
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

%% The applications of the Erlang/OTP installation (their names are system names).
otp_applications() -> lists:sort(maps:keys(otp_applications_set())).

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

%% Names registered by OTP's own applications are system names without being listed.
structural_system_names_test_() ->
    P = new([logger_proxy, code_server, inet_db, kernel_safe_sup], []),
    [?_assert(lists:member(kernel, otp_applications())),
     ?_assertEqual({error, system_name}, check(logger_proxy, P)),
     ?_assertEqual({error, system_name}, check(code_server, P)),
     ?_assertEqual({error, system_name}, check(kernel_safe_sup, P)),
     ?_assertEqual(false, is_system_name(policy_test_unregistered_name_zz)),
     ?_assert(lists:all(fun is_system_name/1,
                        [N || N <- registered(), is_pid(whereis(N)),
                              application:get_application(whereis(N)) =:= {ok, kernel}]))].

user_names_are_not_system_names_test() ->
    Pid = spawn(fun() -> receive stop -> ok end end),
    Name = policy_test_user_proc,
    true = register(Name, Pid),
    try ?assertEqual(ok, check(Name, new([Name], [])))
    after Pid ! stop
    end.

signals_refused_test() ->
    Name = policy_test_protected,
    Pid = spawn(fun() -> receive stop -> ok end end),
    true = register(Name, Pid),
    try
        ?assertNot(signals_refused(Pid, false)),
        ?assert(signals_refused(Pid, true)),
        ?assert(signals_refused(Pid, [other, Name])),
        ?assertNot(signals_refused(Pid, [other])),
        ?assertNot(signals_refused(self(), [Name]))
    after Pid ! stop
    end.

node_check_test() ->
    ?assertEqual(local, check_node(node(), [], <<"x">>)),
    ?assertEqual(local, check_node('srv@vm', [], <<"srv@vm">>)),
    ?assertEqual({error, not_allowed}, check_node('srv@vm', [], <<"other">>)),
    ?assertEqual({remote, 'a@b'}, check_node('a@b', ['a@b'], <<"x">>)),
    ?assertEqual({error, not_allowed}, check_node("a@b", [], <<"x">>)),
    ?assertEqual(local, check_node(<<"srv@vm">>, [], <<"srv@vm">>)),
    ?assertEqual({error, not_allowed}, check_node(<<"a@b">>, ['a@b'], <<"x">>)).
-endif.
