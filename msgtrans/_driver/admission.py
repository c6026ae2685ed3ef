"""Accept-time admission, once for the three backends: :class:`AcceptGate` (each listener
asks it about every connection it accepted, where it checked ``max_sessions`` before), the
application's admission hook (the core's :class:`~msgtrans.core.admission.Candidate` and
:class:`~msgtrans.core.admission.Refuse`), and the refusal counting and throttled logging.

The decisions are the core's (:class:`~msgtrans.core.admission.AdmissionControl`); this module
reads the clock, finds the peer's host, counts refusals in the transport's metrics and logs
them once per peer per interval.  It does no I/O: a listener closes what the gate refuses.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..core.admission import (
    AdmissionControl,
    AdmissionHook,
    Candidate,
    FirstPacket,
    RefusalReason,
    Refuse,
    refusal,
)
from ..core.config import DEFAULT_FIRST_PACKET_TIMEOUT
from ..core.metrics import TransportMetrics
from ..core.quic import QuicAppError
from ..core.session import CloseReason, SessionState

__all__ = ["AcceptGate", "accept_gate", "reset"]

logger = logging.getLogger("msgtrans.admission")


def _host(address: Any) -> str | None:
    # One peer is one host: the port changes with every connection of it.
    if isinstance(address, (tuple, list)) and address:
        return str(address[0])
    return None


def _inner(machine: Any) -> Any:
    # Under TLS the protocol machine is the TLS machine's inner one.
    return getattr(machine, "inner", machine)


def _peer_certificate(machine: Any) -> Mapping[str, Any] | None:
    ssl_object = getattr(machine, "_ssl", None)  # the TlsMachine's SSLObject
    if ssl_object is None:
        return None
    try:
        cert = ssl_object.getpeercert()
    except ValueError:  # handshake not done
        return None
    return cert or None


#: SO_LINGER on, 0 s: close() drops what is queued and sends a RST (no FIN, no TIME_WAIT).
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _stream_socket(session: Any) -> Any:
    # Each backend's stream IO: blocking's channel has .sock, trio's .\_sock, asyncio's the
    # transport's "socket" extra.
    io = getattr(session, "_io", None)
    sock = getattr(io, "sock", None) or getattr(io, "_sock", None)
    if sock is None:
        transport = getattr(io, "_transport", None)
        if transport is not None:
            sock = transport.get_extra_info("socket")
    return sock


def reset(session: Any, reason: str) -> None:
    """Drop the TCP connection of *session* at once with a RST (``SO_LINGER`` 0, then an
    abort): no close handshake to wait for, nothing of the socket left on the server."""
    sock = _stream_socket(session)
    if sock is not None:
        # Already closed, or not a socket that lingers: the abort alone, then.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    session.abort(reason)


def _protocol_name(session: Any) -> str:
    machine = session.connection.machine
    name = str(session.protocol.value)
    if name == "tcp":
        return "tls" if machine is not _inner(machine) else "tcp"
    if name == "websocket":
        return "wss" if machine is not _inner(machine) else "ws"
    return name


class AcceptGate:
    """Asks, for each connection a listener accepted, whether it may become a session; counts
    and logs the refusals.  One per transport, shared by its listeners (thread-safe: the
    blocking backend's listeners and sessions run on its I/O thread, the application's
    threads read the counts).

    Args:
        metrics: where refusals are counted (``connection.refused_by_server`` and
            ``refusals`` by reason).
        control: the per-peer and rate limits (default: none).
        hook: the application's admission hook (default: none).
        clock: the monotonic clock the rate limit and the log throttle read.
        first_packet: the hook decides on a TCP, TLS or QUIC session once its first message
            arrived (``admission(hook, first_packet=True)``), not at its handshake.
        first_packet_timeout: with *first_packet*, how long a session is held for its first
            message when its listener has no ``first_packet_timeout`` of its own (QUIC's, or
            a TCP config's ``None``); ``None``: no limit.
    """

    def __init__(self, metrics: TransportMetrics | None = None,
                 control: AdmissionControl | None = None, hook: AdmissionHook | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 on_refused: Callable[[], None] | None = None, first_packet: bool = False,
                 first_packet_timeout: float | None = DEFAULT_FIRST_PACKET_TIMEOUT) -> None:
        self.metrics = metrics
        # Without limits it still throttles the refusal log (max_sessions, the hook).
        self.control = control if control is not None else AdmissionControl()
        self.hook = hook
        self.first_packet = first_packet and hook is not None
        self.first_packet_timeout = first_packet_timeout
        # Sessions the hook accepted on their first message, on their way back through the
        # stream's hand-out (which asks established() again).
        self._cleared: set[Any] = set()
        self._clock = clock
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._limits = self.control.limits_anything

    def __call__(self) -> None:
        """Count one connection refused at ``max_sessions`` (the old ``on_refused`` call)."""
        self._count(RefusalReason.MAX_SESSIONS)

    # --- at accept ---------------------------------------------------------------------------

    def admit(self, config: Any, live: int, peer: Any) -> bool:
        """Whether a connection from *peer* (its socket address), accepted by the listener of
        *config* that serves *live* sessions, may become a session.  A refusal is counted and
        logged (once per peer per interval); the caller closes the socket.  An admitted one
        counts for its peer until the caller's :meth:`track` sees its session finish."""
        max_sessions = config.max_sessions
        if max_sessions is not None and live >= max_sessions:
            self._refuse(RefusalReason.MAX_SESSIONS, peer, f"{live} sessions (max_sessions)")
            return False
        if not self._limits:
            return True
        with self._lock:
            reason = self.control.admit(_host(peer), self._clock())
        if reason is None:
            return True
        self._refuse(reason, peer, "max_sessions_per_peer" if reason is RefusalReason.PER_PEER
                     else "connection_rate")
        return False

    def track(self, session: Any, peer: Any,
              local: Callable[[], Any] | None = None) -> None:
        """Follow the session made for a connection :meth:`admit` let in: its peer's count
        goes down when it finishes, a ``first_packet_timeout`` close is counted, and with an
        admission hook a WebSocket upgrade request is shown to the hook before it is
        answered (*local*: returns the socket's local address, asked only for the hook)."""
        if self.hook is not None:
            machine = _inner(session.connection.machine)
            if hasattr(machine, "request_check"):
                machine.request_check = self._request_check(session, peer, local)
        session.when_finished(lambda s: self._finished(s, peer))

    def cancel(self, peer: Any) -> None:
        """A connection :meth:`admit` let in gets no session after all (setting it up
        failed): it no longer counts for its peer."""
        if self._limits:
            with self._lock:
                self.control.release(_host(peer))

    def established(self, session: Any,
                    hand_out: Callable[[Any], None] | None = None) -> bool:
        """Whether *session*, its handshake complete, may be handed out by ``accept()`` now:
        the admission hook decides (except for WebSocket, decided at its upgrade request), and
        QUIC sessions meet the per-peer and rate limits here (their listener has no accept
        step).  A refused session is dropped (TCP and TLS: a RST at once; QUIC: a
        CONNECTION_CLOSE with application error ``REFUSED`` and the hook's reason) and
        counted.

        With ``first_packet`` (and *hand_out*, the stream's hand-out), a TCP, TLS or QUIC
        session is held instead (``False`` for now): its first message goes to the hook,
        and an accepted session is given to *hand_out* (which calls this again, answered
        ``True``), its first message then queued as usual."""
        if self.hook is None and not self._limits:
            return True
        if self.first_packet and session in self._cleared:
            self._cleared.discard(session)
            return True
        protocol = _protocol_name(session)
        if protocol == "quic" and self._limits:
            peer = session.peer_address
            if not self.admit(_NO_MAX, 0, peer):
                session.start_close(session.connection.going_away_code, "refused")
                return False
            session.when_finished(lambda s: self._finished(s, peer))
        hook = self.hook
        if hook is None or protocol in ("ws", "wss"):
            return True
        machine = session.connection.machine
        if self.first_packet and hand_out is not None:
            self._hold(session, protocol, hand_out)
            return False
        candidate = Candidate(protocol, session.peer_address, None,
                              peer_certificate=_peer_certificate(machine))
        refused = self._ask(candidate)
        if refused is None:
            return True
        self._turn_away(session, protocol, refused.reason)
        return False

    def _hold(self, session: Any, protocol: str, hand_out: Callable[[Any], None]) -> None:
        """Hold *session* until its first message, which the hook then decides on."""
        machine = session.connection.session
        if machine.state is not SessionState.OPEN:
            return  # closed meanwhile (its handshake's news came a loop pass late)
        machine.hold_for_admission(self.first_packet_timeout, session._time())
        # The deadline may be new (QUIC): the session's timer learns it (each backend's
        # _after_input re-reads the deadline once _deadline_moved says so).
        session._deadline_moved = True
        session._after_input()
        peer = session.peer_address
        certificate = _peer_certificate(session.connection.machine)
        if protocol == "quic" and not self._limits:
            # Stream sessions are followed from their accept (track), QUIC ones by the limits'
            # check in established() when there are limits; else a QUIC one that stays silent
            # is counted as first_packet_timeout from here.
            session.when_finished(self._silent)

        def decide(message: Any) -> bool:
            # Whether the hook refused the session on its first message (then dropped).
            session.dispatch = None
            machine.admitted()
            candidate = Candidate(protocol, peer, None, peer_certificate=certificate,
                                  first_packet=FirstPacket.of(message.packet))
            refused = self._ask(candidate)
            if refused is not None:
                self._turn_away(session, protocol, refused.reason)
                return True
            self._cleared.add(session)
            try:
                hand_out(session)
            finally:
                self._cleared.discard(session)
            return False

        inbox = session._inbox
        if inbox:
            # It arrived before the handshake's completion reached us (a backend that learns
            # of it a loop pass later): decided on now, left queued first.
            decide(inbox[0])
            return
        # Until then the session's dispatch (free until the stream hands it out) takes the
        # first message to the hook: refused, it is dropped with the session (True: never
        # queued); accepted, it is queued as the session's first message (False).
        session.dispatch = decide

    @staticmethod
    def _turn_away(session: Any, protocol: str, reason: str) -> None:
        if protocol == "quic":
            session.start_close(int(QuicAppError.REFUSED), reason)
        else:
            reset(session, f"refused by the admission hook ({reason})")

    # --- the hook ------------------------------------------------------------------------------

    def _ask(self, candidate: Candidate) -> Refuse | None:
        """The hook's answer on *candidate* (a refusal counted and logged); a hook that
        raises refuses (logged with its traceback)."""
        assert self.hook is not None
        try:
            answer = self.hook(candidate)
        except Exception:
            logger.exception("the admission hook raised on %s: refusing", candidate)
            answer = Refuse(500, "admission hook error")
        refused = refusal(answer)
        if refused is not None:
            self._refuse(RefusalReason.ADMISSION, candidate.peer_address,
                         f"the admission hook: {refused.reason}")
        return refused

    def _request_check(self, session: Any, peer: Any, local: Callable[[], Any] | None
                       ) -> Callable[[str, tuple[tuple[str, str], ...]], tuple[int, str] | None]:
        def check(target: str, headers: tuple[tuple[str, str], ...]) -> tuple[int, str] | None:
            machine = session.connection.machine
            try:
                here = local() if local is not None else None
            except OSError:
                here = None
            candidate = Candidate(_protocol_name(session), peer, here, target, headers,
                                  _peer_certificate(machine))
            refused = self._ask(candidate)
            return None if refused is None else (refused.status, refused.reason)
        return check

    # --- counting ------------------------------------------------------------------------------

    def _finished(self, session: Any, peer: Any) -> None:
        if self._limits:
            with self._lock:
                self.control.release(_host(peer))
        self._silent(session, peer)

    def _silent(self, session: Any, peer: Any = None) -> None:
        if session.close_reason is CloseReason.FIRST_PACKET_TIMEOUT:
            self._refuse(RefusalReason.FIRST_PACKET_TIMEOUT,
                         peer if peer is not None else session.peer_address,
                         "no complete packet in first_packet_timeout")

    def _count(self, reason: RefusalReason) -> None:
        if self.metrics is not None:
            self.metrics.refusal(reason.value)
        if self._on_refused is not None and reason is not RefusalReason.FIRST_PACKET_TIMEOUT:
            self._on_refused()

    def _refuse(self, reason: RefusalReason, peer: Any, detail: str) -> None:
        with self._lock:
            self._count(reason)
            count = self.control.log_refusal(_host(peer), self._clock())
        if count is not None:
            logger.warning("refused %d connection(s) from %s since the last report: %s (%s)",
                           count, _host(peer) or "?", detail, reason)


class _NoMax:
    max_sessions = None


_NO_MAX = _NoMax()


def accept_gate(on_refused: Any) -> AcceptGate:
    """The :class:`AcceptGate` a listener was given as its ``on_refused`` (the transport's),
    or one that counts nothing but calls *on_refused* (a plain callable, or ``None``) for
    each refusal."""
    if isinstance(on_refused, AcceptGate):
        return on_refused
    return AcceptGate(on_refused=on_refused)
