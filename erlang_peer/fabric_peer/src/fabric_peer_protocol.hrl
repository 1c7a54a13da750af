%% The state of fabric_peer_protocol, shared with the modules of the established protocol
%% that work on it: fabric_peer_payload (the payload rewriting against the session's id
%% tables), fabric_peer_names (destinations and whereis), fabric_peer_links (link and exit
%% frames), fabric_peer_commands (local commands into frames), fabric_peer_acks
%% (sequencing, acks and the commands waiting for outbox room), fabric_peer_flowctl and
%% fabric_peer_issue (credit), fabric_peer_route (the `route' frames) and
%% fabric_peer_dead_order (DEAD notices after their process's last messages). No other
%% module includes it.
-record(p, {
          o :: map(),
          env :: fabric_peer_protocol:env(),
          peer = <<"unknown">> :: binary(),       % for the logs
          mode :: legacy | extended | undefined,
          feats = #{} :: #{binary() => true},
          peer_max :: pos_integer(),
          connected = false :: boolean(),
          s :: fabric_peer_session:session(),
          %% session state of `acks' (fabric_peer_seq) and `credit' (fabric_peer_credit),
          %% kept here rather than inside `s': they change with every message, and one
          %% update of this record is cheaper than one of the session and one of this
          %% (issue 15); cleared when the session ends (fabric_peer_acks:end_session/2)
          seq :: fabric_peer_seq:seq() | undefined,
          credit :: fabric_peer_credit:credit() | undefined,
          window :: fabric_peer_frame:window(),
          atoms_left :: non_neg_integer(),
          stats :: map(),
          %% the counters of `info/1' that change with every frame (the others: `stats')
          frames_in = 0 :: non_neg_integer(),
          frames_out = 0 :: non_neg_integer(),
          messages_in = 0 :: non_neg_integer(),
          messages_out = 0 :: non_neg_integer(),
          next_req = 1 :: pos_integer(),
          whereis_waiting = #{} :: #{pos_integer() => gen_statem:from()},
          %% route (fabric_peer_route): requests in flight, a client's node set and monitors
          route = #{} :: map(),
          %% DEAD notices to repeat right after the frame being written (see pid_id/2)
          redead = [] :: [tuple()],
          %% DEAD notices waiting for their process's last messages (fabric_peer_dead_order)
          deads = fabric_peer_dead_order:new() :: fabric_peer_dead_order:order(),
          hb_n = 0 :: non_neg_integer(),
          dead_pid :: pid() | undefined,
          signaller :: pid() | undefined,
          %% while one frame is handled: proxies started for it, proxy ids still to start
          %% (first pass of rewrite_in/2), the export limit hit by rewrite_out/2
          fresh = [] :: [pid()],
          missing = #{} :: #{integer() => true},
          refused :: term(),
          acts = [] :: [fabric_peer_protocol:action()],              % newest first
          %% acks: user commands waiting for outbox room or credit (fabric_peer_pending),
          %% messages of `!' dropped in the current overflow (and the batch not reported
          %% yet), allowance to give back to proxies (messages of theirs carried out, given
          %% back in batches)
          pq = fabric_peer_pending:new() :: fabric_peer_pending:pending(),
          overflow = 0 :: non_neg_integer(),
          overflow_batch = [] :: [map()],
          allow = #{} :: #{pid() => pos_integer()},
          %% allowance due back (a batch complete, fabric_peer_issue:returned/2)
          allow_due = [] :: [{pid(), pos_integer()}],
          %% credit: the local pid the frame being handled was delivered to, or the
          %% connection of another client it was routed to (with its wire destination)
          delivered = none :: fabric_peer_credit:owner() | none,
          end_reason = closed :: atom(),
          flushers = [] :: [gen_statem:from()]
         }).
