"""The core's public names that every backend package (``msgtrans.io_asyncio``, ``io_trio``,
``io_sync``) re-exports, written once.

A backend's ``__init__`` star-imports this module (which binds exactly the names of
``__all__``, each the core's own object), imports its own classes (``Transport``, ``Session``,
``Message``, ``SessionPool``, ... are different classes in every backend) from its own modules,
and adds this ``__all__`` to its own.
"""

from ..core.config import (
    QuicConfig,
    QuicServerConfig,
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
from ..core.metrics import MetricsSnapshot
from ..core.packet import PacketType
from ..core.pool import PoolStatus
from ..core.session import CloseReason, SessionState

__all__ = [
    "CloseReason",
    "ConfigurationError",
    "MetricsSnapshot",
    "PacketType",
    "PoolStatus",
    "Protocol",
    "ProtocolError",
    "QuicConfig",
    "QuicServerConfig",
    "ResourceError",
    "ServerTlsConfig",
    "SessionState",
    "TcpConfig",
    "TcpServerConfig",
    "TlsConfig",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeoutError",
    "WebSocketConfig",
    "WebSocketServerConfig",
]
