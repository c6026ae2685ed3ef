"""msgtrans.core: the sans-IO heart of msgtrans (wire format, framing, errors, configuration).

Nothing here does I/O, reads a clock or starts a thread: bytes and the current time go in as
arguments, packets, events and bytes to send come out.  The asyncio, trio and blocking drivers
are thin layers over these machines.
"""

from .errors import (
    ERROR_CODES,
    ConfigurationError,
    ErrorKind,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .framing import (
    DEFAULT_ZERO_COPY_THRESHOLD,
    QUIC_MAX_FRAME,
    LengthPrefixedDecoder,
    PacketDecoder,
    length_prefix,
)
from .packet import (
    DEFAULT_MAX_EXT_HEADER,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Compression,
    Limits,
    MessageIdCounter,
    Packet,
    PacketFlags,
    PacketType,
)

__all__ = [
    "DEFAULT_MAX_EXT_HEADER",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_ZERO_COPY_THRESHOLD",
    "ERROR_CODES",
    "HEADER_SIZE",
    "QUIC_MAX_FRAME",
    "Compression",
    "ConfigurationError",
    "ErrorKind",
    "LengthPrefixedDecoder",
    "Limits",
    "MessageIdCounter",
    "Packet",
    "PacketDecoder",
    "PacketFlags",
    "PacketType",
    "Protocol",
    "ProtocolError",
    "ResourceError",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeoutError",
    "length_prefix",
]
