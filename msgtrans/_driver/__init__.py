"""The backend-neutral half of every driver: synchronous, I/O-free bookkeeping shared by
``io_asyncio``, ``io_trio`` and ``io_sync``.

What lives here is what the three drivers would otherwise each write: session event handling
(inbox, replies, unanswered requests, writable state, metrics, error enrichment), the
transport's session table, stats and shutdown arithmetic, the QUIC listener's connection
table, the pools' bookkeeping and the received message.  Nothing here opens a socket, starts a
task or thread, or waits; each backend subclasses these classes and supplies a few hooks (wake
the inbox, settle a reply, writable changed) with its own primitives.  Like the core, this
package never names a protocol: the core decides (see ``docs/design.md``).
"""

import threading

from ..core.buffers import install_default_receive_pool, receive_pool

# The core makes no locks (it is sans-IO); the backends share one receive pool per process,
# given back to from application threads (Message.release), so it gets a real lock here.
install_default_receive_pool(receive_pool(lock=threading.Lock()))
