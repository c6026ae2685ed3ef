"""msgtrans.core: the sans-IO heart of msgtrans (wire format, framing, errors, configuration).

Nothing here does I/O, reads a clock or starts a thread: bytes and the current time go in as
arguments, packets, events and bytes to send come out.  The asyncio, trio and blocking drivers
are thin layers over these machines.

The protocol machines and :mod:`msgtrans.core.connection` are imported from their modules, so that
``import msgtrans`` stays light (no h11, wsproto or aioquic until a protocol is used).
"""

from .buffers import BufferPool, ObjectPool, ReleaseError
from .config import (
    ALPN,
    SUBPROTOCOL,
    ConnectionConfig,
    QuicConfig,
    QuicServerConfig,
    ServerConfig,
    ServerTlsConfig,
    TcpConfig,
    TcpServerConfig,
    TlsConfig,
    WebSocketConfig,
    WebSocketServerConfig,
    parse_server_url,
    parse_url,
    to_config,
    to_server_config,
)
from .errormap import map_error, map_quic_close, map_websocket_close
from .errors import (
    ERROR_CODES,
    ConfigurationError,
    ErrorKind,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .expansion import ExpansionStrategy, FixedExpansion, NoExpansion, SmartExpansion
from .framing import (
    DEFAULT_ZERO_COPY_THRESHOLD,
    QUIC_MAX_FRAME,
    LengthPrefixedDecoder,
    PacketDecoder,
    length_prefix,
)
from .metrics import TransportMetrics, render_prometheus
from .packet import (
    DEFAULT_MAX_EXT_HEADER,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Compression,
    Limits,
    MessageIdCounter,
    Packet,
    PacketFlags,
    PacketType,
)
from .pool import PoolMachine, PoolStatus
from .reconnect import (
    DEFAULT_RECONNECT_POLICY,
    GiveUp,
    LinkState,
    ReconnectMachine,
    ReconnectPolicy,
    Retry,
)

__all__ = [
    "ALPN",
    "DEFAULT_MAX_EXT_HEADER",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_RECONNECT_POLICY",
    "DEFAULT_ZERO_COPY_THRESHOLD",
    "ERROR_CODES",
    "HEADER_SIZE",
    "QUIC_MAX_FRAME",
    "SUBPROTOCOL",
    "BufferPool",
    "Compression",
    "ConfigurationError",
    "ConnectionConfig",
    "ErrorKind",
    "ExpansionStrategy",
    "FixedExpansion",
    "GiveUp",
    "LengthPrefixedDecoder",
    "Limits",
    "LinkState",
    "MessageIdCounter",
    "NoExpansion",
    "ObjectPool",
    "Packet",
    "PacketDecoder",
    "PacketFlags",
    "PacketType",
    "PoolMachine",
    "PoolStatus",
    "Protocol",
    "ProtocolError",
    "QuicConfig",
    "QuicServerConfig",
    "ReconnectMachine",
    "ReconnectPolicy",
    "ReleaseError",
    "ResourceError",
    "Retry",
    "ServerConfig",
    "ServerTlsConfig",
    "SmartExpansion",
    "TcpConfig",
    "TcpServerConfig",
    "TlsConfig",
    "TransportConnectionError",
    "TransportError",
    "TransportMetrics",
    "TransportTimeoutError",
    "WebSocketConfig",
    "WebSocketServerConfig",
    "length_prefix",
    "map_error",
    "map_quic_close",
    "map_websocket_close",
    "parse_server_url",
    "parse_url",
    "render_prometheus",
    "to_config",
    "to_server_config",
]
