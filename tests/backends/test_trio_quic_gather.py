"""The trio QUIC client's writer lets a busy sender fill datagrams before cutting them."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from msgtrans.core.packet import Packet
from msgtrans.core.quic import QuicMachine
from msgtrans.io_trio._quic import GATHER_BYTES, GATHER_ROUNDS, QuicClientIO


def _client_io(sock: trio.socket.SocketType) -> tuple[QuicClientIO, QuicMachine]:
    machine = QuicMachine.client(("127.0.0.1", 4433), cert_verification=False)
    machine.start(0.0)
    machine.datagrams_to_send(0.0)
    session = SimpleNamespace(connection=SimpleNamespace(machine=machine), id=1)
    return QuicClientIO(session, sock, ("127.0.0.1", 4433)), machine  # type: ignore[arg-type]


def _udp() -> trio.socket.SocketType:
    return trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)


def test_a_busy_sender_fills_a_datagram_before_it_is_cut() -> None:
    packet = Packet(payload=b"m" * 64)

    async def main() -> int:
        with _udp() as sock:
            return await gather_while_sending(*_client_io(sock))

    async def gather_while_sending(io: QuicClientIO, machine: QuicMachine) -> int:
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for _ in range(10 * GATHER_BYTES // 80):  # bounded: far more than one datagram
                machine.send_packet(packet)
                sent += 1
                await trio.lowlevel.checkpoint()  # as every trio send is

        async with trio.open_nursery() as nursery:
            machine.send_packet(packet)
            nursery.start_soon(sender)
            await io._gather()
            gathered = machine.gathered_bytes
            nursery.cancel_scope.cancel()
        return gathered

    gathered = trio.run(main)
    framed = 4 + 16 + 64
    # Many messages per datagram (the sender queues one per round, and the writer waits up to
    # GATHER_ROUNDS rounds or GATHER_BYTES), rather than the one or two of a writer that cuts
    # datagrams as soon as it runs.
    assert gathered >= min(GATHER_BYTES, GATHER_ROUNDS * framed) // 2
    assert gathered <= GATHER_BYTES + (GATHER_ROUNDS + 1) * framed


def test_an_idle_sender_is_not_waited_for() -> None:
    async def main() -> tuple[int, int, int]:
        with _udp() as sock:
            io, machine = _client_io(sock)
            machine.send_packet(Packet(payload=b"request"))
            before = machine.gathered_bytes
            rounds = await gather_alone(io)
            return before, machine.gathered_bytes, rounds

    async def gather_alone(io: QuicClientIO) -> int:
        rounds = 0

        async def count() -> None:
            nonlocal rounds
            while True:
                rounds += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count)
            await io._gather()
            nursery.cancel_scope.cancel()
        return rounds

    before, after, rounds = trio.run(main)
    assert after == before > 0
    assert rounds <= 4 < GATHER_ROUNDS  # two idle rounds, then the request leaves
