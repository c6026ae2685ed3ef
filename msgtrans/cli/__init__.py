"""The pieces of ``python -m msgtrans``: ``serve`` (a multi-protocol echo server), ``send``
(one message from the shell) and the live ``demo``.  :mod:`msgtrans.__main__` only parses the
arguments and calls into these modules, each imported when its command runs so ``--help`` and
``--version`` stay fast."""

from __future__ import annotations

__all__ = ["format_payload", "host_port"]


def host_port(text: str) -> str:
    """Check a ``HOST:PORT`` (``[::1]:PORT`` for IPv6) argument and return it unchanged.

    Raises:
        ValueError: no port, or the port is not 0..65535 (argparse turns this into a usage
            error).
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def format_payload(data: bytes) -> str:
    """*data* as text when it is UTF-8, else as hex: what the shell should show of a payload."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
