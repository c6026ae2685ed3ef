"""msgtrans: whole messages over TCP, TLS, WebSocket and QUIC, wire-compatible with msgtrans.

The names here are the backend-independent ones: the wire format, the errors and the
configuration.  Pick a backend by importing it (``msgtrans.io_asyncio`` and friends, as they land).
"""

from . import core
from .core import *  # noqa: F403

__version__ = "0.1.0"
__all__ = [*core.__all__, "__version__"]  # noqa: PLE0604
