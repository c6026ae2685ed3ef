"""Packets per second for the msgtrans codec: encoding, and decoding a stream fed in 64 KiB chunks.

    python bench/bench_codec.py            # about 1.5 s per measurement (best of 5 windows)
    python bench/bench_codec.py --quick    # about 0.2 s per measurement, for a smoke run

Measures 64-byte and 64 KiB payloads:

* encode: ``Packet.encode()`` and ``Packet.encode_parts()`` (the vectored-write form);
* decode: a stream of back-to-back packets cut into 64 KiB chunks, given to ``PacketDecoder``
  through ``feed(bytes)`` and through ``get_buffer()`` / ``buffer_updated()`` (the recv_into
  path; the copy into the offered buffer stands in for the kernel's), the latter also with a
  receive pool (``pool``: big packets received into lent buffers, each payload released as soon
  as it is decoded, as ``Message.release()`` would);
* baseline: a minimal hand-written ``struct.unpack_from`` loop decoding the same chunks, with no
  limits, no validation and no zero copy, to show what the decoder's checks and bookkeeping cost.
  ``vs baseline`` is msgtrans throughput divided by the baseline's (above 1: msgtrans is faster).

Not a test: numbers depend on the machine; compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msgtrans.core import Packet, PacketDecoder, PacketType
from msgtrans.core.buffers import BufferPool, receive_pool, release_view

CHUNK = 64 * 1024
STREAM_BYTES = 8 * 1024 * 1024  # per pass over the decode stream
SIZES = {"64 B": 64, "64 KiB": 64 * 1024}
HEADER = struct.Struct(">BBBBIHIH")


def measure(run: Callable[[], int], seconds: float, windows: int = 5) -> float:
    """Call *run* (which returns how many packets it handled) for about *seconds*; packets/s.

    The time is cut into *windows* and the best window counts: on a shared machine the slow
    ones measure the neighbours, not the code (the reasoning of ``timeit``'s min).
    """
    run()  # warm up: first-touch allocations, caches
    best = 0.0
    for _ in range(windows):
        count = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds / windows:
            count += run()
            elapsed = time.perf_counter() - start
        best = max(best, count / elapsed)
    return best


def encode_bench(packet: Packet, parts: bool) -> Callable[[], int]:
    batch = 1000 if len(packet.payload) < 1024 else 100
    encode = packet.encode_parts if parts else packet.encode

    def run() -> int:
        for _ in range(batch):
            encode()
        return batch

    return run


def feed_bench(chunks: list[bytes], per_pass: int) -> Callable[[], int]:
    def run() -> int:
        decoder = PacketDecoder()
        n = 0
        for chunk in chunks:
            n += len(decoder.feed(chunk))
        assert n == per_pass, (n, per_pass)
        return n

    return run


def receive_into_bench(
    chunks: list[bytes], per_pass: int, pool: BufferPool | None = None
) -> Callable[[], int]:
    def run() -> int:
        decoder = PacketDecoder(buffer_pool=pool)
        n = 0
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                with decoder.get_buffer() as area:
                    k = min(len(area), len(view))
                    area[:k] = view[:k]  # what recv_into would have the kernel do
                view = view[k:]
                packets = decoder.buffer_updated(k)
                n += len(packets)
                if pool is not None:
                    for packet in packets:
                        release_view(packet.payload)
        decoder.release_buffers()
        assert n == per_pass, (n, per_pass)
        return n

    return run


def baseline_bench(chunks: list[bytes], per_pass: int) -> Callable[[], int]:
    unpack_from = HEADER.unpack_from

    def run() -> int:
        out = []
        held = b""
        for chunk in chunks:
            data = held + chunk if held else chunk
            pos, end = 0, len(data)
            while end - pos >= 16:
                _v, comp, ptype, biz, mid, ext_len, payload_len, flags = unpack_from(data, pos)
                total = 16 + ext_len + payload_len
                if end - pos < total:
                    break
                body = pos + 16 + ext_len
                out.append((ptype, mid, biz, data[body : pos + total], data[pos + 16 : body],
                            comp, flags))
                pos += total
            held = data[pos:]
        assert len(out) == per_pass, (len(out), per_pass)
        return len(out)

    return run


ROW = "{:<28} {:>8} {:>14} {:>10} {:>12}"


def show(name: str, label: str, wire_size: int, rate: float, baseline: float | None = None
         ) -> None:
    ratio = f"{rate / baseline:.2f}x" if baseline else ""
    mbps = rate * wire_size / 1e6  # wire bytes, header included
    print(ROW.format(name, label, f"{rate:,.0f}", f"{mbps:,.1f}", ratio))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="about 0.2 s per measurement")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args()
    seconds = 0.2 if args.quick else args.seconds

    print(f"msgtrans codec benchmark: Python {platform.python_version()} "
          f"({platform.python_implementation()}), {platform.machine()}, {seconds:g} s each, "
          f"decode fed in {CHUNK // 1024} KiB chunks")
    print(ROW.format("operation", "payload", "packets/s", "MB/s", "vs baseline"))
    print("-" * 76)
    for label, size in SIZES.items():
        packet = Packet(PacketType.REQUEST, 7, 1, bytes(range(256)) * (size // 256) or b"x" * size)
        wire = packet.encode()
        per_pass = max(1, STREAM_BYTES // len(wire))
        stream = wire * per_pass
        chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

        n = len(wire)
        show("encode()", label, n, measure(encode_bench(packet, parts=False), seconds))
        show("encode_parts()", label, n, measure(encode_bench(packet, parts=True), seconds))
        base = measure(baseline_bench(chunks, per_pass), seconds)
        show("decode feed(bytes)", label, n, measure(feed_bench(chunks, per_pass), seconds), base)
        show("decode get_buffer/updated", label, n,
             measure(receive_into_bench(chunks, per_pass), seconds), base)
        show("decode get_buffer, pool", label, n,
             measure(receive_into_bench(chunks, per_pass, receive_pool()), seconds), base)
        show("baseline struct loop", label, n, base, base)


if __name__ == "__main__":
    main()
