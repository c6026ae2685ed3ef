"""msgtrans on asyncio: whole messages over TCP, TLS, WebSocket and QUIC.

::

    import msgtrans.io_asyncio as mt

    async with mt.Transport.builder().build() as transport:
        session = await transport.connect("tcp://127.0.0.1:9001")
        reply = await session.request(b"ping")

The driver is thin: it feeds socket bytes and datagrams to the core's
:class:`~msgtrans.core.connection.Connection`, writes what the core returns (once per loop
iteration), keeps one timer per connection at the core's next deadline, and turns the core's
events into awaitables.  Every protocol decision is the core's.
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
from ._message import Message
from ._pool import SessionPool
from ._session import Session
from ._transport import SessionStream, ShutdownReport, Transport, TransportBuilder

__all__ = [
    "CloseReason",
    "ConfigurationError",
    "Message",
    "MetricsSnapshot",
    "PacketType",
    "PoolStatus",
    "Protocol",
    "ProtocolError",
    "QuicConfig",
    "QuicServerConfig",
    "ResourceError",
    "ServerTlsConfig",
    "Session",
    "SessionPool",
    "SessionState",
    "SessionStream",
    "ShutdownReport",
    "TcpConfig",
    "TcpServerConfig",
    "TlsConfig",
    "Transport",
    "TransportBuilder",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeoutError",
    "WebSocketConfig",
    "WebSocketServerConfig",
]
