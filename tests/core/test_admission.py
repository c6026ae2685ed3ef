"""The sans-IO admission pieces: the token bucket, the per-peer counts, the refusal-log
throttle and AdmissionControl, driven by hypothesis state machines against simple models; the
first-packet deadline of the session machine."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from msgtrans.core.admission import (
    AdmissionControl,
    Candidate,
    FirstPacket,
    PeerCounts,
    RefusalLog,
    RefusalReason,
    Refuse,
    TokenBucket,
    refusal,
)
from msgtrans.core.config import TcpServerConfig, WebSocketServerConfig
from msgtrans.core.connection import server_connection
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.packet import Packet, PacketType
from msgtrans.core.session import CloseReason, SessionClosed, SessionMachine, SessionState

PEERS = st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", None])
STEPS = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


class BucketMachine(RuleBasedStateMachine):
    """A token bucket never grants more than burst + rate x elapsed, and grants whenever the
    model says a whole token is there."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = 2.0
        self.burst = 3
        self.bucket = TokenBucket(self.rate, self.burst)
        self.now = 100.0
        self.start = self.now
        self.granted = 0
        self.model = float(self.burst)

    @rule(dt=STEPS)
    def wait(self, dt: float) -> None:
        self.now += dt
        self.model = min(float(self.burst), self.model + dt * self.rate)

    @rule()
    def take(self) -> None:
        got = self.bucket.take(self.now)
        assert got == (self.model >= 1.0 - 1e-9) or math.isclose(self.model, 1.0, abs_tol=1e-6)
        if got:
            self.granted += 1
            self.model -= 1.0

    @invariant()
    def never_more_than_allowed(self) -> None:
        assert self.granted <= self.burst + (self.now - self.start) * self.rate + 1e-6
        assert 0.0 <= self.bucket.tokens(self.now) <= self.burst


class ControlMachine(RuleBasedStateMachine):
    """AdmissionControl against a model: per-peer counts never pass the limit, a peer's
    count goes down with each release, refusals per peer take no token, and the table only
    holds peers with live sessions."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 2
        self.control = AdmissionControl(max_sessions_per_peer=self.limit, rate=1.0, burst=4)
        self.now = 0.0
        self.live: dict[str, int] = {}
        self.admitted_unknown = 0

    @rule(dt=STEPS)
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(peer=PEERS)
    def connect(self, peer: str | None) -> None:
        before = None if self.control.bucket is None else self.control.bucket.tokens(self.now)
        reason = self.control.admit(peer, self.now)
        if peer is not None and self.live.get(peer, 0) >= self.limit:
            assert reason is RefusalReason.PER_PEER
            assert self.control.bucket is not None
            assert self.control.bucket.tokens(self.now) == before  # no token taken
            return
        if reason is RefusalReason.RATE:
            assert before is not None and before < 1.0
            return
        assert reason is None
        if peer is None:
            self.admitted_unknown += 1
        else:
            self.live[peer] = self.live.get(peer, 0) + 1

    @precondition(lambda self: any(self.live.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(p for p, n in self.live.items() if n)))
        self.control.release(peer)
        self.live[peer] -= 1

    @invariant()
    def counts_match(self) -> None:
        for peer, n in self.live.items():
            assert self.control.peers.count(peer) == n <= self.limit
        assert len(self.control.peers) == sum(1 for n in self.live.values() if n)


class RefusalLogMachine(RuleBasedStateMachine):
    """Each peer gets at most one line per interval, and every refusal is in exactly one line
    or still held back."""

    def __init__(self) -> None:
        super().__init__()
        self.log = RefusalLog(10.0)
        self.now = 0.0
        self.refused: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.last_line: dict[str, float] = {}

    @rule(dt=STEPS)
    def wait(self, dt: float) -> None:
        self.now += dt * 3

    @rule(peer=st.sampled_from(["a", "b", "c"]))
    def refuse(self, peer: str) -> None:
        self.refused[peer] = self.refused.get(peer, 0) + 1
        count = self.log.refused(peer, self.now)
        if count is not None:
            if peer in self.last_line:
                assert self.now - self.last_line[peer] >= 10.0
            self.last_line[peer] = self.now
            self.logged[peer] = self.logged.get(peer, 0) + count
        else:
            assert self.now - self.last_line[peer] < 10.0

    @invariant()
    def nothing_lost(self) -> None:
        for peer, n in self.refused.items():
            assert self.logged.get(peer, 0) + self.log.held_back(peer) == n


TestBucket = BucketMachine.TestCase
TestControl = ControlMachine.TestCase
TestRefusalLog = RefusalLogMachine.TestCase
for case in (TestBucket, TestControl, TestRefusalLog):
    case.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_a_flood_from_many_peers_keeps_the_log_bounded() -> None:
    log = RefusalLog(10.0)
    lines = [log.refused(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1.0)
             for i in range(5000)]
    assert len(log) <= 1025
    # Past the table's size, the rest share one line per interval.
    assert sum(1 for n in lines if n is not None) == 1025


@given(step=st.floats(min_value=-5.0, max_value=0.0))
def test_a_clock_stepping_back_grants_nothing_extra(step: float) -> None:
    bucket = TokenBucket(1.0, 1)
    assert bucket.take(10.0)
    assert not bucket.take(10.0 + step)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(("make", "field"), [
    (lambda: TokenBucket(0, 1), "connection_rate"),
    (lambda: TokenBucket(math.inf, 1), "connection_rate"),
    (lambda: TokenBucket(1, 0), "connection_rate.burst"),
    (lambda: PeerCounts(0), "max_sessions_per_peer"),
    (lambda: RefusalLog(0), "log_interval"),
    (lambda: AdmissionControl(burst=3), "connection_rate.burst"),
    (lambda: Refuse(200), "status"),
])
def test_bad_settings_name_their_field(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()  # type: ignore[operator]
    assert info.value.field == field


def test_the_candidate_finds_headers_in_any_case() -> None:
    candidate = Candidate("ws", ("127.0.0.1", 5), None, "/", (("x-token", "t"),))
    assert candidate.header("X-Token") == "t"
    assert candidate.header("missing") is None


# --- the first-packet deadline --------------------------------------------------------------


@given(timeout=st.floats(min_value=0.01, max_value=100.0), start=st.floats(0.0, 1e6))
def test_the_first_packet_deadline_closes_a_silent_session(timeout: float, start: float) -> None:
    session = SessionMachine(1)
    session.require_first_packet(timeout)
    session.established(start)
    assert session.next_deadline() == start + timeout
    session.handle_timer(start + timeout * 0.5)
    assert session.state is SessionState.OPEN
    session.handle_timer(start + timeout)
    assert session.state is SessionState.CLOSED
    assert session.close_reason is CloseReason.FIRST_PACKET_TIMEOUT
    closed = [e for e in session.events() if isinstance(e, SessionClosed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.error_code == "timeout.first_packet"


def test_a_packet_ends_the_first_packet_deadline() -> None:
    session = SessionMachine(1)
    session.require_first_packet(1.0)
    session.established(0.0)
    session.receive_packet(Packet(PacketType.ONE_WAY, 1, 0, b"x"), 0.5)
    assert session.next_deadline() is None
    session.handle_timer(5.0)
    assert session.state is SessionState.OPEN


@pytest.mark.parametrize("config", [TcpServerConfig(first_packet_timeout=0.5),
                                    WebSocketServerConfig(first_packet_timeout=0.5)])
def test_server_connections_take_the_config_field(config: object) -> None:
    connection = server_connection(config)  # type: ignore[arg-type]
    connection.start(0.0)
    if isinstance(config, TcpServerConfig):
        # Plain TCP is established at once: the deadline runs from the accept.
        assert connection.next_deadline() == 0.5
    connection.handle_timer(0.6)
    if isinstance(config, TcpServerConfig):
        assert connection.session.close_reason is CloseReason.FIRST_PACKET_TIMEOUT
        assert connection.machine.is_closed  # no close_timeout wait for a silent peer
    off = server_connection(TcpServerConfig(first_packet_timeout=None))
    off.start(0.0)
    assert off.next_deadline() is None


# --- the first packet the hook sees, and holding a session for it -------------------------------


@given(packet_type=st.sampled_from([PacketType.ONE_WAY, PacketType.REQUEST]),
       message_id=st.integers(0, 2**32 - 1), biz_type=st.integers(0, 255),
       payload=st.binary(max_size=2048), ext_header=st.binary(max_size=64),
       as_view=st.booleans())
def test_first_packet_is_an_owned_copy_of_the_packet(
        packet_type: PacketType, message_id: int, biz_type: int, payload: bytes,
        ext_header: bytes, as_view: bool) -> None:
    source = bytearray(payload)
    packet = Packet(packet_type, message_id, biz_type,
                    memoryview(source) if as_view else payload, ext_header)
    first = FirstPacket.of(packet)
    assert (first.packet_type, first.message_id, first.biz_type, first.payload,
            first.ext_header) == (packet_type, message_id, biz_type, payload, ext_header)
    assert type(first.payload) is bytes and type(first.ext_header) is bytes
    if source:
        source[0] ^= 0xFF  # the receive buffer is reused: the hook's copy does not move
    assert first.payload == payload
    with pytest.raises(AttributeError):
        first.payload = b""  # type: ignore[misc]
    assert Candidate("tcp", None, None, first_packet=first).first_packet is first


@given(answer=st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3),
                        st.builds(Refuse, st.integers(400, 599), st.text(max_size=8))))
def test_refusal_reads_a_hook_answer(answer: object) -> None:
    refused = refusal(answer)
    if answer is None or answer is True:
        assert refused is None
    elif isinstance(answer, Refuse):
        assert refused is answer
    else:
        assert refused == Refuse()


@given(timeout=st.floats(min_value=0.01, max_value=100.0), start=st.floats(0.0, 1e6),
       armed=st.booleans())
def test_a_held_session_keeps_its_first_packet_deadline_past_other_packets(
        timeout: float, start: float, armed: bool) -> None:
    """While held for admission, a packet that is no message for the application (an
    unmatched response) does not end the deadline; admitted() does.  The deadline is the
    listener's (require_first_packet) when armed, else the hold's."""
    session = SessionMachine(1)
    if armed:
        session.require_first_packet(timeout)
    session.established(start)
    session.hold_for_admission(None if armed else timeout, start)
    assert session.next_deadline() == start + timeout
    session.receive_packet(Packet(PacketType.RESPONSE, 9, 0, b"?"), start)
    assert session.next_deadline() == start + timeout
    session.handle_timer(start + timeout)
    assert session.close_reason is CloseReason.FIRST_PACKET_TIMEOUT

    admitted = SessionMachine(2)
    admitted.established(start)
    admitted.hold_for_admission(timeout, start)
    admitted.receive_packet(Packet(PacketType.REQUEST, 1, 0, b"token"), start)
    admitted.admitted()
    assert admitted.next_deadline() is None
    admitted.handle_timer(start + 2 * timeout)
    assert admitted.state is SessionState.OPEN


def test_hold_for_admission_checks_its_timeout_and_may_have_none() -> None:
    session = SessionMachine(1)
    session.established(0.0)
    with pytest.raises(ConfigurationError):
        session.hold_for_admission(0, 0.0)
    session.hold_for_admission(None, 0.0)
    assert session.next_deadline() is None
