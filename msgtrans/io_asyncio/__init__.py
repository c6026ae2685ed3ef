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

from .._driver import exports as _exports
from .._driver.exports import *  # noqa: F403  (the core's public names, as in every backend)
from ._message import Message
from ._pool import SessionPool
from ._reconnect import ReconnectingSession
from ._session import Session
from ._transport import SessionStream, ShutdownReport, Transport, TransportBuilder

# This backend's own classes, then the core's names; sorted, as the list always was.
__all__ = ["Message", "ReconnectingSession", "Session", "SessionPool", "SessionStream",
           "ShutdownReport", "Transport", "TransportBuilder"]
__all__ += _exports.__all__
__all__.sort()
del _exports
