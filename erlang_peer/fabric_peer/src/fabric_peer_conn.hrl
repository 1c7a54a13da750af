%% The state of a connection process, shared by its two lifecycles (fabric_peer_server,
%% fabric_peer_client) and the common code of fabric_peer_conn. What the protocol owns
%% (session tables, counters, the error window, the outbox) is inside `p'.
-record(d, {
          role :: server | client,
          o :: map(),                          % settings (fabric_peer_opts)
          ref :: reference(),                  % registry key of the server / client
          t :: fabric_peer_transport:transport(),
          sock :: term(),
          buf = <<>> :: fabric_peer_frame:buffer(), % bytes received, not yet a whole frame
          peer = <<"unknown">> :: binary(),
          peer_ip :: inet:ip_address() | undefined,
          version = 0 :: non_neg_integer(),
          peer_node = <<>> :: binary(),
          peer_hb = 0 :: non_neg_integer(),
          session :: binary() | undefined,
          hs = #{} :: map(),                   % handshake in progress (frames, nonces)
          token :: reference(),                % authenticates control messages to proxies
          %% shared with the proxies: token, counters (messages waiting in the proxies,
          %% slot 1, and in this connection, slot 2), send_timeout, max_pending
          shared :: map(),
          p :: fabric_peer_protocol:proto(),
          waiters = [] :: [gen_statem:from()],
          attempt = 0 :: non_neg_integer(),
          target :: {term(), inet:port_number()} | undefined,
          ever_connected = false :: boolean(),
          last_in = 0 :: integer(),
          last_out = 0 :: integer(),
          %% the socket reads on by itself ({active, N}: fabric_peer_transport:arm/2)
          armed = false :: boolean(),
          %% what slot 2 of the shared counters says (written when it changes)
          pending = 0 :: non_neg_integer(),
          %% streaming: a larger minimum heap (fabric_peer_conn:busy/1)
          busy = idle :: idle | active | quiet
         }).
