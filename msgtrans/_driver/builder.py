"""The transport builder's settings and the shutdown report, the same for every backend: each
backend's ``TransportBuilder`` adds only ``build()``, and every backend's shutdown returns this
:class:`ShutdownReport`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.errors import ConfigurationError
from ..core.session import DEFAULT_REQUEST_TIMEOUT, SessionMachine

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "ShutdownReport", "TransportBuilderBase"]

#: Seconds the graceful shutdown at the end of a transport's ``with`` block may take.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0

_B = TypeVar("_B", bound="TransportBuilderBase")


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did (every backend's ``graceful_shutdown`` and ``shutdown`` return one).

    Attributes:
        closed_cleanly: sessions whose close handshake completed.
        forced: sessions that were dropped (their transport aborted) or ended uncleanly.
        messages_flushed: messages (including responses) that left during the shutdown.
        elapsed: seconds the shutdown took.
    """

    closed_cleanly: int
    forced: int
    messages_flushed: int
    elapsed: float


class TransportBuilderBase:
    """The settings of a backend's ``TransportBuilder``; the backend adds ``build()``."""

    def __init__(self) -> None:
        self._request_timeout = DEFAULT_REQUEST_TIMEOUT
        self._connect_timeout: float | None = None
        self._shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT
        self._session: dict[str, Any] = {}

    def request_timeout(self: _B, seconds: float) -> _B:
        """Seconds a request waits for its response unless the call says otherwise.

        Raises:
            ConfigurationError: not a positive finite number.
        """
        _check_seconds("request_timeout", seconds)
        self._request_timeout = float(seconds)
        return self

    def connect_timeout(self: _B, seconds: float) -> _B:
        """Seconds :meth:`Transport.connect` may take, handshakes included (default: each
        config's ``connect_timeout``).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        _check_seconds("connect_timeout", seconds)
        self._connect_timeout = float(seconds)
        return self

    def shutdown_timeout(self: _B, seconds: float) -> _B:
        """Seconds the graceful shutdown at the end of ``async with`` may take (default 5).

        Raises:
            ConfigurationError: negative or not a number.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 <= seconds < float("inf")
        ):
            raise ConfigurationError("shutdown_timeout", f"must be >= 0 seconds, got {seconds!r}")
        self._shutdown_timeout = float(seconds)
        return self

    def session_settings(self: _B, **settings: Any) -> _B:
        """Other settings of every session's machine (``heartbeat_interval``,
        ``idle_timeout``, ``send_high_water_bytes``, ``receive_max_messages``... see
        :class:`~msgtrans.core.session.SessionMachine`); checked by :meth:`build`."""
        self._session.update(settings)
        return self

    def _checked_settings(self) -> dict[str, Any]:
        """The session settings for ``Transport(settings=...)``.

        Raises:
            ConfigurationError: a session setting is invalid.
        """
        settings = {"request_timeout": self._request_timeout, **self._session}
        try:
            SessionMachine(0, **settings)  # validates every setting now, not at first connect
        except TypeError as exc:
            raise ConfigurationError("session_settings", str(exc)) from exc
        return settings


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < float("inf")
    ):
        raise ConfigurationError(
            name, f"must be a positive finite number of seconds, got {value!r}"
        )
