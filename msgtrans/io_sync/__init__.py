"""msgtrans with blocking calls: whole messages over TCP, TLS, WebSocket and QUIC, for code
with no event loop (scripts, threaded web frameworks, notebooks).

::

    import msgtrans.io_sync as mt

    with mt.Transport.builder().build() as transport:
        session = transport.connect("tcp://127.0.0.1:9001")
        reply = session.request(b"ping", timeout=2.0)
        message = session.receive(timeout=1.0)   # TransportTimeoutError if nothing came

The same names, defaults and errors as :mod:`msgtrans.io_asyncio`, minus ``await``: iterators
instead of async iterators, context managers instead of async ones, and every object safe to use
from several threads at once.  All background work (reading sockets, QUIC timers, keepalives)
runs in one thread per transport, a ``selectors`` loop over all its sockets, stopped and joined
by the shutdown; :meth:`Transport.serve` runs its handler in a small thread pool.  Every
protocol decision is the core's.
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
