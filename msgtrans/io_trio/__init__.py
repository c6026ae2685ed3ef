"""msgtrans on trio: whole messages over TCP, TLS, WebSocket and QUIC.

::

    import trio
    import msgtrans.io_trio as mt

    async def main() -> None:
        async with mt.Transport.builder().build() as transport:   # opens the transport's nursery
            session = await transport.connect("tcp://127.0.0.1:9001")
            reply = await session.request(b"ping")

    trio.run(main)

The public names, defaults and errors are those of :mod:`msgtrans.io_asyncio`.  Every task this
backend starts lives in a nursery the application can see: the transport's own (``async with
transport:``, or the one passed as ``Transport(nursery=...)``), or the nursery of
:meth:`Transport.serve` for handler tasks.  The driver is thin: per connection one task reads
into the core's :class:`~msgtrans.core.connection.Connection`, one writes what the core returns
(one flush per batch of sends), one sleeps until the core's next deadline.
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
