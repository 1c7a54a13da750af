%% @doc What a connection reports when messages cannot be vouched for (docs/protocol.md
%% 11.7, 12.6): to the `undelivered' handler (README, "Acknowledgements"), with one logger
%% warning per report; and, when the connection ends, what still waited in its proxies.
-module(fabric_peer_report).

-include_lib("kernel/include/logger.hrl").
-include("fabric_peer_log.hrl").
-include("fabric_peer_conn.hrl").

-export([undelivered/3, proxies_unsent/3]).

%% How long an ending connection waits for its proxies' reports.
-define(COLLECT_MS, 2000).

%% @doc Report `Items' (`#{dest, msg, confirmed, state}') for `Reason'.
-spec undelivered(atom(), [map()], #d{}) -> ok.
undelivered(Reason, Items, #d{o = O} = D) ->
    Unconfirmed = length([x || #{state := unconfirmed} <- Items]),
    ?LOG_WARNING(#{what => messages_undelivered, peer => D#d.peer, reason => Reason,
                   unconfirmed => Unconfirmed, unsent => length(Items) - Unconfirmed,
                   text => "reported to the undelivered handler"}, ?FABRIC_LOG),
    Report = #{reason => Reason, session => D#d.session, peer_node => D#d.peer_node,
               messages => Items},
    case maps:get(undelivered, O) of
        owner -> notify(maps:get(owner, O, undefined), Report);
        none -> ok;
        Pid when is_pid(Pid) -> notify(Pid, Report);
        Fun when is_function(Fun, 1) ->
            try Fun(Report)
            catch C:E ->
                    ?LOG_ERROR(#{what => undelivered_handler_failed, peer => D#d.peer, class => C,
                                 reason => E}, ?FABRIC_LOG)
            end
    end,
    ok.

notify(Pid, Report) when is_pid(Pid) -> Pid ! {fabric_undelivered, self(), Report};
notify(_, _) -> ok.

%% @doc The connection ends and its proxies were told to: the messages that waited in them
%% (`Ctr' slot 1 counts them; each proxy reports before it subtracts) are reported as
%% `unsent', within ?COLLECT_MS.
-spec proxies_unsent(counters:counters_ref(), atom(), #d{}) -> ok.
proxies_unsent(Ctr, Reason, D) ->
    case counters:get(Ctr, 1) of
        0 -> ok;
        _ -> collect(Ctr, Reason, D, erlang:monotonic_time(millisecond) + ?COLLECT_MS, [])
    end.

collect(Ctr, Reason, D, Deadline, Acc) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {fabric_proxy_unsent, Proxy, Msgs} ->
            Items = [#{dest => Proxy, msg => M, confirmed => false, state => unsent} || M <- Msgs],
            collect(Ctr, Reason, D, Deadline, [Items | Acc])
    after min(Left, 20) ->
            case counters:get(Ctr, 1) =:= 0 orelse Left =:= 0 of
                true -> flush(Reason, D, lists:append(lists:reverse(Acc)));
                false -> collect(Ctr, Reason, D, Deadline, Acc)
            end
    end.

flush(Reason, D, Items) ->
    %% the last reports, if any, are already here
    More = receive_all([]),
    case Items ++ More of
        [] -> ok;
        All -> undelivered(Reason, All, D)
    end.

receive_all(Acc) ->
    receive
        {fabric_proxy_unsent, Proxy, Msgs} ->
            receive_all(Acc ++ [#{dest => Proxy, msg => M, confirmed => false, state => unsent}
                                || M <- Msgs])
    after 0 -> Acc
    end.
