"""The backplane envelope's bytes, the node's buffering and subscriptions, and the group table,
proven over chosen inputs and histories."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from msgtrans.core.backplane import (
    BackplaneNode,
    Envelope,
    TargetKind,
    check_node_id,
    new_node_id,
)
from msgtrans.core.errors import ConfigurationError, ProtocolError
from msgtrans.core.groups import MAX_GROUP_NAME, GroupTable, check_group

node_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
groups = st.text(min_size=1, max_size=40).filter(
    lambda g: len(g.encode("utf-8", "surrogatepass")) <= MAX_GROUP_NAME
    and g.encode("utf-8", "surrogatepass") == g.encode("utf-8", "ignore"))


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(TargetKind))
    target = ("" if kind is TargetKind.ALL else draw(groups) if kind is TargetKind.GROUP
              else str(draw(st.integers(0, 2**63))))
    return Envelope(draw(node_ids), kind, target, draw(st.integers(0, 255)),
                    draw(st.binary(max_size=300)), draw(st.binary(max_size=40)))


@given(envelopes())
def test_an_envelope_survives_its_bytes(envelope: Envelope) -> None:
    assert Envelope.decode(envelope.encode()) == envelope
    assert Envelope.decode(memoryview(envelope.encode())) == envelope


def test_the_bytes_are_the_documented_ones() -> None:
    data = Envelope("n1", TargetKind.GROUP, "room", 7, b"hi", b"\x01").encode()
    assert data == (b"MTBP\x01\x01\x07\x02n1" + b"\x00\x04room" + b"\x00\x01\x01" + b"hi")


@given(envelopes(), st.data())
def test_every_truncation_is_refused_or_decodes_a_shorter_payload(
        envelope: Envelope, data: st.DataObject) -> None:
    raw = envelope.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    head_len = len(raw) - len(envelope.payload)
    if cut >= head_len:
        # A cut inside the payload cannot be seen: the transport (Redis) carries whole messages.
        assert Envelope.decode(raw[:cut]).payload == envelope.payload[:cut - head_len]
        return
    with pytest.raises(ProtocolError) as info:
        Envelope.decode(raw[:cut])
    assert info.value.error_code == "protocol.backplane"


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_any_bytes_decode_or_raise_a_clear_error(data: bytes) -> None:
    error: ProtocolError | None = None
    try:
        envelope = Envelope.decode(data)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert error.error_code == "protocol.backplane"
        assert "bad backplane envelope" in str(error)
    else:
        assert Envelope.decode(envelope.encode()) == envelope


@pytest.mark.parametrize(("raw", "reason"), [
    (b"XXXX\x01\x00\x00\x01a\x00\x00\x00\x00", "magic"),
    (b"MTBP\x02\x00\x00\x01a\x00\x00\x00\x00", "version"),
    (b"MTBP\x01\x09\x00\x01a\x00\x00\x00\x00", "target kind"),
    (b"MTBP\x01\x00\x00\x01/\x00\x00\x00\x00", "not a node id"),
    (b"MTBP\x01\x00\x00\x01a\x00\x01x\x00\x00", "names a target"),
    (b"MTBP\x01\x02\x00\x01a\x00\x01x\x00\x00", "decimal"),
    (b"MTBP\x01\x01\x00\x01a\x00\x00\x00\x00", "group name"),
    (b"MTBP\x01\x01\x00\x01a\x00\x01\xff\x00\x00", "UTF-8"),
    (b"MTBP\x01\x00\x00\x01a\x00", "target length"),
    (b"MTBP\x01\x00\x00\x01a\x00\x00\x00\x05ab", "ext header of 5 bytes"),
])
def test_bad_envelopes_name_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Envelope.decode(raw)


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ConfigurationError) as info:
        Envelope("n", TargetKind.ALL, "", 256, b"").encode()
    assert info.value.field == "biz_type"
    with pytest.raises(ConfigurationError) as info:
        Envelope("n", TargetKind.ALL, "", 0, b"", b"x" * 70_000).encode()
    assert info.value.field == "ext_header"
    with pytest.raises(ConfigurationError) as info:
        Envelope("bad id", TargetKind.ALL, "", 0, b"").encode()
    assert info.value.field == "node_id"


def test_node_ids_and_arguments_are_checked() -> None:
    assert check_node_id("node-1.a_b") == "node-1.a_b"
    assert len(new_node_id()) == 16 and new_node_id() != new_node_id()
    for bad in ("", "a/b", "x" * 65, 5):
        with pytest.raises(ConfigurationError):
            check_node_id(bad)
    for field, kwargs in (("prefix", {"prefix": "a b"}), ("max_buffered", {"max_buffered": -1}),
                          ("max_buffered_bytes", {"max_buffered_bytes": True})):
        with pytest.raises(ConfigurationError) as info:
            BackplaneNode("n", **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    node = BackplaneNode("n")
    with pytest.raises(ConfigurationError):
        node.to_session("n2", -1, b"")
    with pytest.raises(ConfigurationError):
        node.to_group("", b"")


def test_groups_are_checked() -> None:
    assert check_group("room") == "room"
    for bad in ("", 3, "x" * 256):
        with pytest.raises(ConfigurationError) as info:
            check_group(bad)
        assert info.value.field == "group"


def test_two_nodes_deliver_to_each_other_and_ignore_their_own() -> None:
    a, b = BackplaneNode("a"), BackplaneNode("b")
    assert a.link_up() == ["msgtrans:all", "msgtrans:node:a"]
    b.link_up()
    assert b.join(5, "room") == ["msgtrans:group:room"]
    a.to_all(b"hello", biz_type=3)
    a.to_group("room", b"in room")
    a.to_session("b", 5, b"direct")
    out = a.take_outbound()
    assert [c for c, _ in out] == ["msgtrans:all", "msgtrans:group:room", "msgtrans:node:b"]
    got = [b.received(c, d) for c, d in out]
    assert [(e.kind, e.target, e.payload) for e in got if e is not None] == [
        (TargetKind.ALL, "", b"hello"), (TargetKind.GROUP, "room", b"in room"),
        (TargetKind.SESSION, "5", b"direct")]
    assert got[0] is not None and got[0].biz_type == 3 and got[0].origin == "a"
    assert [a.received(c, d) for c, d in out] == [None, None, None]  # its own
    assert b.stats().received == 3 and a.stats().published == 3


def test_a_node_ignores_other_nodes_sessions_and_groups_it_left() -> None:
    a, b = BackplaneNode("a"), BackplaneNode("b")
    a.link_up()
    b.link_up()
    b.join(1, "g")
    a.to_group("g", b"x")
    a.to_session("c", 1, b"for c")
    [(gc, gd), (sc, sd)] = a.take_outbound()
    assert b.leave(1, "g") == ["msgtrans:group:g"]
    assert b.received(gc, gd) is None  # no member left here
    assert b.received(sc, sd) is None  # arrived on another node's channel
    assert b.received("msgtrans:all", b"not an envelope") is None
    assert b.stats().invalid == 1


def test_an_outage_buffers_up_to_the_bound_drops_the_rest_and_says_so_once() -> None:
    node = BackplaneNode("a", max_buffered=3, max_buffered_bytes=10_000)
    node.link_up()
    node.link_down()
    assert [node.to_all(bytes([i])) for i in range(5)] == [True, True, True, False, False]
    assert node.take_outbound() == []  # nothing leaves while down
    assert node.take_drop_notice() == 2
    node.to_all(b"more")
    assert node.take_drop_notice() is None  # one line per outage
    stats = node.stats()
    assert (stats.connected, stats.buffered, stats.dropped, stats.outages) == (False, 3, 3, 1)
    node.link_up()
    assert node.take_drop_notice() == 1  # the rest, once, after the outage
    assert node.take_drop_notice() is None
    out = node.take_outbound()
    assert [Envelope.decode(d).payload for _, d in out] == [b"\x00", b"\x01", b"\x02"]


def test_the_byte_bound_binds_and_requeue_keeps_order() -> None:
    one = len(Envelope("a", TargetKind.ALL, "", 0, b"x" * 10).encode())
    node = BackplaneNode("a", max_buffered=100, max_buffered_bytes=2 * one)
    node.link_up()
    assert [node.to_all(b"x" * 10) for _ in range(3)] == [True, True, False]
    out = node.take_outbound()
    assert node.stats().published == 2
    node.to_all(b"y" * 10)
    node.link_down()
    node.requeue(out)  # the link broke under the publish: first in line again, bounded
    assert node.stats().published == 0
    node.link_up()
    payloads = [Envelope.decode(d).payload for _, d in node.take_outbound()]
    assert payloads == [b"x" * 10, b"x" * 10]  # the newer one did not fit: dropped
    assert node.stats().dropped == 2


def test_subscriptions_follow_the_first_join_and_the_last_leave() -> None:
    node = BackplaneNode("a", prefix="app")
    assert node.join(1, "g") == []  # link down: subscribed at link_up
    assert node.link_up() == ["app:all", "app:node:a", "app:group:g"]
    assert node.join(2, "g") == []  # not the first member
    assert node.join(2, "h") == ["app:group:h"]
    assert node.leave(1, "g") == []
    assert node.forget(2) == ["app:group:g", "app:group:h"]
    assert node.subscriptions() == ["app:all", "app:node:a"]
    node.link_down()
    node.join(3, "z")
    assert node.leave(3, "z") == []


class GroupModel(RuleBasedStateMachine):
    """The table against a plain set of (session, group) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.table: GroupTable[int] = GroupTable()
        self.pairs: set[tuple[int, str]] = set()

    @rule(key=st.integers(0, 5), group=st.sampled_from("abcd"))
    def join(self, key: int, group: str) -> None:
        first = not any(g == group for _, g in self.pairs)
        assert self.table.join(key, group) is first
        self.pairs.add((key, group))

    @rule(key=st.integers(0, 5), group=st.sampled_from("abcd"))
    def leave(self, key: int, group: str) -> None:
        had = (key, group) in self.pairs
        self.pairs.discard((key, group))
        last = had and not any(g == group for _, g in self.pairs)
        assert self.table.leave(key, group) is last

    @precondition(lambda self: bool(self.pairs))
    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted({k for k, _ in self.pairs})))
        before = {g for _, g in self.pairs}
        self.pairs = {(k, g) for k, g in self.pairs if k != key}
        after = {g for _, g in self.pairs}
        assert set(self.table.forget(key)) == before - after

    @invariant()
    def agrees(self) -> None:
        assert set(self.table.groups()) == {g for _, g in self.pairs}
        assert len(self.table) == len({g for _, g in self.pairs})
        for group in "abcd":
            assert set(self.table.members(group)) == {k for k, g in self.pairs if g == group}
            assert self.table.size(group) == len(self.table.members(group))
            assert (group in self.table) is bool(self.table.members(group))
        for key in range(6):
            assert set(self.table.groups_of(key)) == {g for k, g in self.pairs if k == key}


TestGroupModel = GroupModel.TestCase


def test_join_all_reports_the_new_groups() -> None:
    table: GroupTable[str] = GroupTable()
    table.join("s", "a")
    assert table.join_all("t", ["a", "b", "c"]) == ["b", "c"]


def test_struct_sizes_are_what_the_module_documents() -> None:
    assert struct.calcsize(">4sBBBB") == 8
