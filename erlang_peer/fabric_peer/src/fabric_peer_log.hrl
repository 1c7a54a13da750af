%% The logger metadata of erlang_peer's events: every event is a report map (`what' names
%% the event) in the domain [fabric_peer], so that a handler or filter can select them
%% (logger_filters:domain/2). Connection processes also set the domain as process metadata
%% (fabric_peer_server / fabric_peer_client init), which covers the modules they run.
-define(FABRIC_LOG, #{domain => [fabric_peer]}).
