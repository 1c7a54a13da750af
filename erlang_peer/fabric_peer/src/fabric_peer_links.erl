%% @doc Links and exit signals across the connection (docs/protocol.md 5), without I/O:
%% the frames `link', `unlink', `exit2' and `link_exit' from the peer, and a proxy killed
%% locally (`exit(Proxy, kill)'), which the peer learns as `exit2 ... kill' (with the
%% `link' feature). Works on the protocol state of `fabric_peer_protocol' and returns
%% actions like it. The frames going out for local signals are `fabric_peer_commands''.
%%
%% Order: the proxy for A sends A's signals (so that B sees them come from A's stand-in),
%% the connection delivers A's messages itself. A signal B must see before A's next
%% message (`exit2', `link', `unlink') is a `signal' action, which the connection carries
%% out by waiting for the proxy to have sent it (`fabric_peer_proxy:signal/3'); a
%% `link_exit' or DEAD ends A, so no later message of A can overtake it (docs/protocol.md
%% 5.2, "Order").
-module(fabric_peer_links).

-include("fabric_peer_protocol.hrl").

-export([dispatch/2, proxy_killed/4]).

-import(fabric_peer_commands, [emit/3]).
-import(fabric_peer_payload, [rewrite_in/2, export/2, proxy_for/2, end_proxy/3,
                              signaller/1, fail/4, act/2]).

-type proto() :: fabric_peer_protocol:proto().

%% @doc A `link', `unlink', `exit2' or `link_exit' frame (classified) from the peer.
-spec dispatch(tuple(), proto()) -> {ok, proto()} | {error, atom(), term(), proto()}.
dispatch({link, A, B}, #p{s = S} = P) when A > 0 ->
    case {fabric_peer_session:exported(B, S), fabric_peer_session:remote_ended(A, S)} of
        {{ok, BPid}, false} ->
            case proxy_for(A, P) of
                {ok, Proxy, P1} -> {ok, act({signal, Proxy, {link, BPid}}, P1)};
                {error, Why, P1} -> {error, limit, Why, P1}
            end;
        %% B ended (its DEAD is on its way), or A ended before its link frame was read: a
        %% link that cannot exist any more
        _ -> {ok, P}
    end;
dispatch({unlink, A, B}, #p{s = S} = P) ->
    case {fabric_peer_session:proxy_of(A, S), fabric_peer_session:exported(B, S)} of
        {{ok, Proxy}, {ok, BPid}} -> {ok, act({signal, Proxy, {unlink, BPid}}, P)};
        _ -> {ok, P}
    end;
dispatch({exit2, A, B, Reason0}, P) when A > 0 -> exit_in(exit, A, B, Reason0, P);
%% a link signal from A, which ended (docs/protocol.md 5.2): the proxy for A ends with it
dispatch({link_exit, A, B, Reason0}, P) when A > 0 -> exit_in(link_exit, A, B, Reason0, P);
dispatch(_, P) -> {error, unknown_frame, bad_ids, P}.

%% `exit2' (Kind `exit') or `link_exit' from the peer's A to our B.
exit_in(Kind, A, B, Reason0, #p{s = S} = P) ->
    case fabric_peer_session:exported(B, S) of
        {ok, BPid} ->
            case rewrite_in(Reason0, P) of
                {ok, Reason, P1} ->
                    Ended = fabric_peer_session:remote_ended(A, P1#p.s),
                    case proxy_for(A, P1) of
                        {ok, Proxy, P2} ->
                            P3 = act({sent_by(Kind), Proxy, {Kind, BPid, Reason}}, P2),
                            case Ended of
                                %% A's DEAD overtook its exit signal (both are sent
                                %% independently): deliver the signal from a stand-in that
                                %% ends right after
                                true -> {ok, end_proxy(Proxy, noproc, P3)};
                                false -> {ok, P3}
                            end;
                        {error, Why, P2} -> fail(limit, Why, P, P2)
                    end;
                {error, {Code, Why}, P1} -> fail(Code, Why, P, P1)
            end;
        error -> {ok, P}
    end.

%% A later message of A must not overtake its exit signal; nothing follows its link signal.
sent_by(exit) -> signal;
sent_by(link_exit) -> control.

%% @doc Proxy `Pid' for the peer's process `Id' ended with `Reason' without a DEAD (ended
%% locally; its monitor fired, the session already forgot it). Killed: the peer's process
%% is killed too (`exit2 ... kill' from a signaller), or, without `link', stays alive
%% behind a dead proxy (logged and counted).
-spec proxy_killed(pid(), integer(), term(), proto()) -> proto().
proxy_killed(Pid, Id, Reason, P0) ->
    P1 = act({forget_proxy, Pid}, P0),
    case {Reason, link_enabled(P1)} of
        {killed, true} ->
            {Sig, P2} = signaller(P1),
            {A, P3} = export(Sig, P2),
            emit(ctrl, {exit2, A, Id, kill}, P3);
        {killed, false} ->
            %% the peer cannot be told (no `link'): its process lives on
            fabric_peer_commands:exit_not_supported(Pid, kill, P1),
            fabric_peer_protocol:count(local_errors,
                                       P1#p{s = fabric_peer_session:alive_behind(Pid, P1#p.s)});
        _ -> P1
    end.

link_enabled(#p{mode = extended, feats = #{<<"link">> := true}}) -> true;
link_enabled(_) -> false.
