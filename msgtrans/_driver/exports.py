"""The core's public names that every backend package (``msgtrans.io_asyncio``, ``io_trio``,
``io_sync``) re-exports, written once.

The builder's arguments are here too (the expansion strategies, the config unions), so a backend
alone is enough to configure its transport.  A backend's ``__init__`` star-imports this module
(which binds exactly the names of ``__all__``, each the core's own object), imports its own
classes (``Transport``, ``Session``, ``Message``, ``SessionPool``, ... are different classes in
every backend) from its own modules, and adds this ``__all__`` to its own.
"""

from ..core.config import (
    ConnectionConfig,
    ConnectionConfigLike,
    QuicConfig,
    QuicServerConfig,
    ServerConfig,
    ServerConfigLike,
    ServerTlsConfig,
    TcpConfig,
    TcpServerConfig,
    TlsConfig,
    WebSocketConfig,
    WebSocketServerConfig,
)
from ..core.errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from ..core.expansion import ExpansionStrategy, FixedExpansion, NoExpansion, SmartExpansion
from ..core.metrics import MetricsSnapshot
from ..core.packet import PacketType
from ..core.pool import PoolStatus
from ..core.reconnect import LinkState, ReconnectPolicy
from ..core.session import CloseReason, SessionState
from .pool import DEFAULT_POOL_RECONNECT

__all__ = [
    "DEFAULT_POOL_RECONNECT",
    "CloseReason",
    "ConfigurationError",
    "ConnectionConfig",
    "ConnectionConfigLike",
    "ExpansionStrategy",
    "FixedExpansion",
    "LinkState",
    "MetricsSnapshot",
    "NoExpansion",
    "PacketType",
    "PoolStatus",
    "Protocol",
    "ProtocolError",
    "QuicConfig",
    "QuicServerConfig",
    "ReconnectPolicy",
    "ResourceError",
    "ServerConfig",
    "ServerConfigLike",
    "ServerTlsConfig",
    "SessionState",
    "SmartExpansion",
    "TcpConfig",
    "TcpServerConfig",
    "TlsConfig",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeoutError",
    "WebSocketConfig",
    "WebSocketServerConfig",
]
