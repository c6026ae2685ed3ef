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
