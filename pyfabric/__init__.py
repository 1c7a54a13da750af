"""pyfabric: a Python node for the fabric protocol (talk to Erlang processes over TCP).

Layers, bottom up (each imports only from the ones below it):

- :mod:`pyfabric.etf`: the Erlang External Term Format codec and value types;
- :mod:`pyfabric.protocol`: the sans-IO fabric protocol core;
- :mod:`pyfabric.runtime`: Erlang-style processes, mailboxes, links and monitors;
- :mod:`pyfabric.transport`: asyncio clients and servers (TCP, TLS);
- this module: the public API, re-exported here (this module defines nothing itself),
  with the blocking facade (:func:`connect`, :func:`start_server`) for scripts and threads.
"""

from ._blocking import BlockingClient, BlockingMailbox, BlockingServer, connect, start_server
from ._version import __version__ as __version__
from .etf import (
    Atom,
    BitString,
    DecodeError,
    EncodeError,
    ETFError,
    ExportFun,
    Fun,
    ImproperList,
    Pid,
    Port,
    Reference,
    binary_to_str,
    charlist_to_str,
    decode,
    encode,
    str_to_binary,
    str_to_charlist,
)
from .protocol import (
    AuthenticationError,
    FeatureNotSupported,
    LocalProtocolError,
    MessagesUndelivered,
    NodeNameInUse,
    ProtocolError,
    RemoteProtocolError,
    UndeliveredMessage,
)
from .runtime import (
    ANY,
    Mailbox,
    NameTaken,
    Node,
    NoProcess,
    NotRegistered,
    Process,
    ProcessError,
    ProcessExit,
    ProcessExited,
    ReceiveTimeout,
)
from .transport import (
    Client,
    ClientClosed,
    ConnectFailed,
    ConnectionState,
    GlobalNameError,
    GlobalNameInUse,
    GroupError,
    NotConnected,
    SendQueueFull,
    SendRefused,
    SendTimeout,
    Server,
    ServerClosed,
    ServerConnection,
    TransportError,
    aconnect,
    serve,
)

__all__ = [
    # connecting and serving
    "aconnect",
    "connect",
    "serve",
    "start_server",
    "Client",
    "Server",
    "ServerConnection",
    "ConnectionState",
    "BlockingClient",
    "BlockingServer",
    "BlockingMailbox",
    # processes
    "Node",
    "Mailbox",
    "Process",
    "ANY",
    # terms
    "Atom",
    "Pid",
    "Reference",
    "Port",
    "ImproperList",
    "BitString",
    "Fun",
    "ExportFun",
    "encode",
    "decode",
    "charlist_to_str",
    "str_to_charlist",
    "binary_to_str",
    "str_to_binary",
    # errors
    "ETFError",
    "DecodeError",
    "EncodeError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "AuthenticationError",
    "NodeNameInUse",
    "FeatureNotSupported",
    "ProcessError",
    "ReceiveTimeout",
    "ProcessExited",
    "ProcessExit",
    "NoProcess",
    "NotRegistered",
    "NameTaken",
    "TransportError",
    "NotConnected",
    "SendQueueFull",
    "SendRefused",
    "SendTimeout",
    "ConnectFailed",
    "ClientClosed",
    "ServerClosed",
    "GlobalNameError",
    "GlobalNameInUse",
    "GroupError",
    "MessagesUndelivered",
    "UndeliveredMessage",
]
