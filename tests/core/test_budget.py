"""Tests of the memory budget: its arithmetic, its hysteresis, and the session machines that
share one (charges where the backlogs grow, credits where they shrink, pauses through the
existing ReadPaused / SendPaused events, MemoryResumed for the sessions another one resumed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from msgtrans.core.budget import MemoryBudget
from msgtrans.core.connection import Connection, client_connection
from msgtrans.core.errors import ConfigurationError, ResourceError
from msgtrans.core.packet import HEADER_SIZE
from msgtrans.core.session import (
    CloseReason,
    MemoryResumed,
    ReadPaused,
    ReadResumed,
    SendPaused,
    SendResumed,
    SessionMachine,
)
from msgtrans.core.tcp import TcpMachine

KIB = 1024

# --- the budget alone --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kw", "field"), [
    ((0,), {}, "memory_limit"),
    ((-5,), {}, "memory_limit"),
    ((True,), {}, "memory_limit"),
    ((1.5,), {}, "memory_limit"),
    ((100,), {"pause_at": 1.2}, "pause_at"),
    ((100,), {"resume_at": -0.1}, "resume_at"),
    ((100,), {"pause_at": 0.5, "resume_at": 0.6}, "resume_at"),
])
def test_bad_settings_name_their_field(args: tuple[object, ...], kw: dict[str, float],
                                       field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MemoryBudget(*args, **kw)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_the_marks_and_the_defaults() -> None:
    budget = MemoryBudget(1000)
    assert (budget.limit, budget.pause_bytes, budget.resume_bytes) == (1000, 800, 600)
    assert budget.stats() == {"limit": 1000, "in_use": 0, "peak": 0, "paused_connections": 0,
                              "refused": 0}


def test_check_refuses_a_charge_that_passes_the_limit_and_names_the_sizes() -> None:
    budget = MemoryBudget(1000)
    budget.charge(700)
    budget.check(300)  # exactly the limit is allowed
    with pytest.raises(ResourceError) as caught:
        budget.check(301)
    error = caught.value
    assert error.error_code == "resource.memory"
    assert (error.resource, error.current, error.limit) == ("memory", 1001, 1000)
    assert "301" in str(error) and "1000" in str(error) and "700 in use" in str(error)
    assert error.retryable
    assert (budget.in_use, budget.refused) == (700, 1)  # nothing was charged


def test_hysteresis_pause_above_pause_mark_resume_at_resume_mark() -> None:
    budget = MemoryBudget(1000)
    assert not budget.charge(800)  # at the mark: not above it
    assert budget.charge(1)
    budget.hold("a")
    budget.hold("b")
    budget.hold("a")  # again: harmless
    assert budget.paused_connections == 2
    assert not budget.credit(200)  # 601: above the resume mark
    assert budget.take_resumable() == []
    assert budget.credit(1)  # 600: at the resume mark
    assert budget.take_resumable() == ["a", "b"]
    assert budget.paused_connections == 0
    assert not budget.credit(1)  # nobody paused: nothing to resume


def test_credit_never_goes_below_zero_and_peak_stays() -> None:
    budget = MemoryBudget(1000)
    budget.charge(900)
    budget.credit(5000)
    assert (budget.in_use, budget.peak) == (0, 900)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 400)), max_size=60),
       st.floats(0, 1), st.floats(0, 1))
def test_in_use_is_the_sum_of_outstanding_charges(ops: list[tuple[bool, int]], a: float,
                                                  b: float) -> None:
    # Charges and credits in any order (a credit takes back one outstanding charge, oldest
    # first): in_use is their difference, never negative; peak is the running maximum.
    budget = MemoryBudget(1000, pause_at=max(a, b), resume_at=min(a, b))
    outstanding: list[int] = []
    peak = 0
    for is_charge, n in ops:
        if is_charge or not outstanding:
            over = budget.charge(n)
            outstanding.append(n)
            assert over == (sum(outstanding) > budget.pause_bytes)
        else:
            budget.credit(outstanding.pop(0))
        peak = max(peak, sum(outstanding))
        assert budget.in_use == sum(outstanding) >= 0
        assert budget.peak == peak


# --- sessions sharing a budget ------------------------------------------------------------------


def _opened(budget: MemoryBudget, **kw: int) -> SessionMachine:
    sm = SessionMachine(0, memory_budget=budget, **kw)
    sm.established(0.0)
    return sm


def test_a_received_message_over_the_pause_mark_pauses_reading() -> None:
    budget = MemoryBudget(100 * KIB)
    sm = _opened(budget)
    for _ in range(5):
        sm.message_delivered(16 * KIB)  # 80 KiB: at the mark
    assert sm.events() == []
    sm.message_delivered(16 * KIB)
    assert sm.events() == [ReadPaused()]
    assert sm.read_paused and sm.budget_paused and budget.is_held(sm)
    # The session's own bound (16 MiB) is far away: only the budget resumes it.
    for _ in range(2):
        sm.message_consumed(16 * KIB)  # 64 KiB: above the resume mark (60 KiB)
    assert sm.events() == [] and sm.read_paused
    sm.message_consumed(16 * KIB)
    assert sm.events() == [ReadResumed()]
    assert not sm.read_paused and not budget.is_held(sm) and budget.in_use == 48 * KIB


def test_the_sessions_own_bound_still_holds_after_the_budget_resumes() -> None:
    budget = MemoryBudget(100 * KIB)
    sm = _opened(budget, receive_max_messages=4)
    for _ in range(6):
        sm.message_delivered(16 * KIB)  # 96 KiB, 6 messages: both pause it
    assert sm.events() == [ReadPaused()]
    sm.messages_consumed(3, 48 * KIB)  # budget at 48 KiB: released, but 3 messages > 4 // 2
    assert sm.events() == [] and sm.read_paused and not sm.budget_paused
    sm.message_consumed(16 * KIB)
    assert sm.events() == [ReadResumed()]


def test_a_queued_send_over_the_pause_mark_pauses_sending_and_the_flush_resumes() -> None:
    budget = MemoryBudget(100 * KIB)
    sm = _opened(budget)
    assert not sm.packet_queued(80 * KIB)
    assert sm.packet_queued(1 * KIB)  # the driver must look: SendPaused
    assert sm.events() == [SendPaused()]
    assert not sm.flushed(20 * KIB)  # 61 KiB
    assert sm.flushed(1 * KIB)
    assert sm.events() == [SendResumed()]
    assert budget.in_use == 60 * KIB


def test_a_send_over_the_limit_is_refused_before_anything_moves() -> None:
    budget = MemoryBudget(100 * KIB)
    sm = _opened(budget)
    budget.charge(90 * KIB)
    with pytest.raises(ResourceError) as caught:
        sm.send(b"x" * (10 * KIB), now=1.0)
    assert caught.value.error_code == "resource.memory"
    assert sm.last_message_id == 0 and sm.stats.messages_sent == 0
    sm.send(b"x" * (10 * KIB - HEADER_SIZE), now=1.0)  # exactly what is left
    with pytest.raises(ResourceError):
        sm.request(b"x" * (10 * KIB), now=1.0)
    assert sm.pending_count == 0
    with pytest.raises(ResourceError):
        sm.stamp_response(10 * KIB, 1.0)


def test_one_session_freeing_memory_resumes_the_others() -> None:
    budget = MemoryBudget(100 * KIB)
    a, b = _opened(budget), _opened(budget)
    b.budget_owner = "b's driver"
    for _ in range(5):
        a.message_delivered(16 * KIB)
    b.message_delivered(16 * KIB)  # 96 KiB: b pauses, a not (it charged under the mark)
    assert (a.events(), b.events()) == ([], [ReadPaused()])
    b.message_consumed(16 * KIB)  # 80 KiB: b's inbox is empty but it stays paused
    assert b.events() == [] and b.read_paused
    a.messages_consumed(2, 32 * KIB)  # 48 KiB: a's credit resumes b
    (event,) = a.events()
    assert isinstance(event, MemoryResumed) and event.sessions == (b,)
    assert event.sessions[0].budget_owner == "b's driver"
    assert b.events() == [ReadResumed()] and not b.read_paused


def test_a_closed_session_gives_its_send_backlog_back() -> None:
    budget = MemoryBudget(100 * KIB)
    a, b = _opened(budget), _opened(budget)
    a.message_delivered(10 * KIB)
    b.packet_queued(80 * KIB)
    a.message_delivered(1 * KIB)  # 91 KiB: a paused
    assert a.events() == [ReadPaused()]
    b.closed(CloseReason.ERROR)
    assert budget.in_use == 11 * KIB and not budget.is_held(b)
    events = b.events()
    assert MemoryResumed((a,)) in events
    assert a.events() == [ReadResumed()]
    assert not b.flushed(80 * KIB)  # after the close: nothing more is credited
    assert budget.in_use == 11 * KIB
    a.messages_consumed(2, 11 * KIB)  # a closed session's queue is still credited when taken
    assert budget.in_use == 0


def test_the_connection_and_the_factories_take_the_budget() -> None:
    budget = MemoryBudget(1 << 20)
    conn = Connection(TcpMachine(is_client=True), memory_budget=budget)
    assert conn.memory_budget is budget and conn.session.memory_budget is budget
    conn.start(0.0)
    conn.queue_send(b"x" * 100, 0, b"", 0.0)
    assert budget.in_use == 100 + HEADER_SIZE
    conn.data_to_send()
    conn.take_unflushed()
    assert budget.in_use == 0
    made = client_connection("tcp://127.0.0.1:1", memory_budget=budget, request_timeout=3)
    assert made.session.memory_budget is budget
    assert client_connection("tcp://127.0.0.1:1").memory_budget is None
    with pytest.raises(ConfigurationError):
        made.session.attach_budget(MemoryBudget(10))


class SharedBudget(RuleBasedStateMachine):
    """Three sessions share a budget; a driver model handles their events after every step.

    Invariants: the budget counts exactly the sessions' backlogs (their open send backlogs and
    every receive backlog); the pause flags the events announced are the machines' own; a
    session the budget holds is paused; under the resume mark nobody is held.
    """

    def __init__(self) -> None:
        super().__init__()
        self.budget = MemoryBudget(64 * KIB, pause_at=0.75, resume_at=0.5)
        self.sessions = [_opened(self.budget, receive_max_bytes=40 * KIB) for _ in range(3)]
        self.read_paused = [False] * 3
        self.send_paused = [False] * 3
        self.inbox: list[list[int]] = [[], [], []]
        self.closed = [False] * 3

    def _drive(self) -> None:
        # Every session's events, until none is left (MemoryResumed names sessions whose
        # events are in their own lists: a driver handles them, as SessionBase does).
        for _ in range(4):
            quiet = True
            for i, sm in enumerate(self.sessions):
                for event in sm.events():
                    quiet = False
                    if isinstance(event, (ReadPaused, ReadResumed)):
                        assert self.read_paused[i] == isinstance(event, ReadResumed)
                        self.read_paused[i] = isinstance(event, ReadPaused)
                    elif isinstance(event, (SendPaused, SendResumed)):
                        assert self.send_paused[i] == isinstance(event, SendResumed)
                        self.send_paused[i] = isinstance(event, SendPaused)
                    elif isinstance(event, MemoryResumed):
                        assert sm not in event.sessions
            if quiet:
                return

    @rule(i=st.integers(0, 2), n=st.integers(0, 16 * KIB))
    def deliver(self, i: int, n: int) -> None:
        self.sessions[i].message_delivered(n)
        self.inbox[i].append(n)
        self._drive()

    @precondition(lambda self: any(self.inbox))
    @rule(i=st.integers(0, 2), many=st.booleans())
    def consume(self, i: int, many: bool) -> None:
        inbox = self.inbox[i]
        if not inbox:
            return
        if many:
            self.sessions[i].messages_consumed(len(inbox), sum(inbox))
            inbox.clear()
        else:
            self.sessions[i].message_consumed(inbox.pop(0))
        self._drive()

    @rule(i=st.integers(0, 2), n=st.integers(1, 16 * KIB))
    def queue(self, i: int, n: int) -> None:
        self.sessions[i].packet_queued(n)
        self._drive()

    @rule(i=st.integers(0, 2), n=st.integers(0, 24 * KIB))
    def flush(self, i: int, n: int) -> None:
        self.sessions[i].flushed(n)  # may over-report: the backlog stops at 0
        self._drive()

    @rule(i=st.integers(0, 2))
    def close(self, i: int) -> None:
        self.sessions[i].closed(CloseReason.ERROR)
        self.closed[i] = True
        self._drive()

    @invariant()
    def the_budget_counts_the_backlogs(self) -> None:
        expected = 0
        for i, sm in enumerate(self.sessions):
            receive, _ = sm.receive_backlog
            assert receive == sum(self.inbox[i])
            expected += receive
            if not self.closed[i]:
                expected += sm.send_backlog[0]
        assert self.budget.in_use == expected >= 0
        assert self.budget.peak >= self.budget.in_use

    @invariant()
    def the_flags_agree(self) -> None:
        for i, sm in enumerate(self.sessions):
            if self.closed[i]:
                continue
            assert sm.read_paused == self.read_paused[i]
            assert sm.send_paused == self.send_paused[i]
            if self.budget.is_held(sm):
                assert sm.read_paused or sm.send_paused
        if self.budget.in_use <= self.budget.resume_bytes:
            assert self.budget.paused_connections == 0
            assert not any(sm.budget_paused for sm in self.sessions)


TestSharedBudget = SharedBudget.TestCase
TestSharedBudget.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
