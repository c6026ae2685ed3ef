"""msgtrans: whole messages over TCP, TLS, WebSocket and QUIC, wire-compatible with msgtrans 1.x/2.x.

The names here are the backend-independent ones: the wire format, the errors and the
configuration.  Pick a backend by importing it (``msgtrans.io_asyncio`` and friends, as they land).
"""

from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]
