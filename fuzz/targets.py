"""Fuzz targets for the msgtrans decoders, shared by the atheris entry points and the bounded
hypothesis runs in CI.

Every target takes one ``bytes`` argument, so atheris (which mutates bytes) and hypothesis
(``st.binary()``) drive the same code.  A target returns normally for any input that the
decoders handle as the spec says (packets, or a :class:`ProtocolError`); anything else, an other
exception or a failed assertion, is a finding.  The structured targets read their input as a
recipe (which packets to build, how to damage them, where to cut the stream) so that the fuzzer
reaches deep into the decoders instead of stopping at the version byte.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msgtrans.core.compression import compress, decompress, zstd_available
from msgtrans.core.errors import ProtocolError
from msgtrans.core.framing import LengthPrefixedDecoder, PacketDecoder, length_prefix
from msgtrans.core.packet import Compression, Limits, Packet, PacketFlags, PacketType

__all__ = [
    "BOUND",
    "LIMITS",
    "Reader",
    "decompress_any",
    "main",
    "packet_decode",
    "packet_round_trip",
    "stream_decode",
    "stream_of_packets",
]

#: Small limits, so that the bound on buffered memory is checked on inputs a fuzzer can make.
LIMITS = Limits(max_payload=4096, max_ext_header=64)
#: The most a decoder may hold at once with LIMITS: prefix, header, ext header, payload.
BOUND = 4 + 16 + LIMITS.max_ext_header + LIMITS.max_payload
RECEIVE = 1024
THRESHOLDS = (None, 1, 64, 512)
MODES = ("bytes", "bytearray", "into")
METHODS = (Compression.NONE, Compression.ZLIB, Compression.ZSTD if zstd_available()
           else Compression.ZLIB)
ERROR_CODES = {
    "protocol.bad_version", "protocol.bad_compression", "protocol.bad_packet_type",
    "protocol.bad_length", "protocol.frame_too_large", "protocol.decompression",
    "protocol.unexpected_eof",
}


class Reader:
    """Takes values off the front of a fuzz input; zeros once it runs out, so every input is a
    valid recipe (the FuzzedDataProvider idea, without needing atheris)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "big")

    def below(self, n: int) -> int:
        return self.uint(2) % n

    def rest(self) -> bytes:
        return self.take(len(self._data))


def packet_from(reader: Reader, max_payload: int = 300, max_ext: int = 20) -> Packet:
    """Build a packet (valid under LIMITS) from the next bytes of *reader*."""
    return Packet(
        packet_type=PacketType(reader.below(3)),
        message_id=reader.uint(4),
        biz_type=reader.uint(1),
        ext_header=reader.take(reader.below(max_ext + 1)),
        payload=reader.take(reader.below(max_payload + 1)),
        compression=METHODS[reader.below(3)],
        flags=PacketFlags(reader.uint(2)),
    )


def expect_code(exc: ProtocolError, codes: set[str]) -> None:
    if exc.error_code not in codes:
        raise AssertionError(f"unexpected error code: {exc!r}")


def check_failed(decoder: PacketDecoder, exc: ProtocolError) -> None:
    """A failed decoder keeps its error, lets its buffers go and refuses everything after."""
    if decoder.error is not exc or decoder.buffered:
        raise AssertionError("the decoder did not keep its error or its buffers")
    for call in (lambda: decoder.feed(b"\x01" * 20), decoder.get_buffer, decoder.feed_eof):
        try:
            call()
        except ProtocolError as again:
            if again is not exc:
                raise AssertionError("a failed decoder raised a new error") from again
        else:
            raise AssertionError("a failed decoder accepted more input")


def check_packet(packet: Packet) -> None:
    assert len(packet.payload) <= LIMITS.max_payload
    assert len(packet.ext_header) <= LIMITS.max_ext_header
    assert type(packet.ext_header) is bytes
    if isinstance(packet.payload, memoryview):
        assert packet.payload.readonly
    else:
        assert type(packet.payload) is bytes


# --- single packets ---------------------------------------------------------------------------


def packet_decode(data: bytes) -> None:
    """Packet.decode on any bytes: a packet that encodes back to the same bytes, or an error."""
    try:
        packet = Packet.decode(data, LIMITS, zero_copy_threshold=256)
    except ProtocolError as exc:
        expect_code(exc, ERROR_CODES)
        return
    check_packet(packet)
    again = packet.encode()
    assert Packet.decode(again, LIMITS) == packet
    if packet.compression is Compression.NONE:
        assert again == data  # uncompressed encoding is canonical


def packet_round_trip(data: bytes) -> None:
    """Packets built from the input survive encode -> decode, alone and as a stream."""
    reader = Reader(data)
    pkts = [packet_from(reader) for _ in range(1 + reader.below(4))]
    for packet in pkts:
        wire = packet.encode()
        assert b"".join(packet.encode_parts()) == wire
        assert Packet.decode(wire, LIMITS) == packet
    sizes = [1 + reader.below(700) for _ in range(3)]
    for length_prefixed in (False, True):
        stream = frame(pkts, length_prefixed)
        got, error = outcome(stream, sizes, MODES[reader.below(3)], reader.below(4),
                             length_prefixed)
        assert (got, error) == (pkts, None)


def decompress_any(data: bytes) -> None:
    """decompress on any bytes, or on a real stream with a byte changed: bounded, or an error."""
    reader = Reader(data)
    method = (Compression.ZLIB, Compression.ZSTD)[reader.uint(1) & 1]
    limit = reader.below(4097)
    damage = reader.uint(1)
    body = reader.rest()
    if damage & 1 and (method is Compression.ZLIB or zstd_available()):
        packed = bytearray(compress(method, body))
        packed[damage % len(packed)] ^= 1 + (damage >> 1)
        body = bytes(packed)
    try:
        out = decompress(method, body, limit)
    except ProtocolError as exc:
        expect_code(exc, {"protocol.decompression", "protocol.frame_too_large"})
        return
    assert len(out) <= limit


# --- streams ----------------------------------------------------------------------------------


def frame(pkts: Sequence[Packet], length_prefixed: bool) -> bytes:
    wires = [p.encode() for p in pkts]
    if length_prefixed:
        return b"".join(length_prefix(len(w)) + w for w in wires)
    return b"".join(wires)


def _push(decoder: PacketDecoder, chunk: bytes, mode: str, out: list[Packet]) -> None:
    if mode == "bytes":
        out += decoder.feed(chunk)
    elif mode == "bytearray":
        buf = bytearray(chunk)
        out += decoder.feed(buf)
        buf[:] = b"\xee" * len(buf)  # the caller reuses its buffer: nothing may alias it
    else:
        view = memoryview(chunk)
        while view:
            area = decoder.get_buffer()
            n = min(len(area), len(view))
            area[:n] = view[:n]
            del area
            view = view[n:]
            out += decoder.buffer_updated(n)


def _check_bounds(decoder: PacketDecoder, max_chunk: int) -> None:
    assert decoder.buffered <= BOUND, decoder.buffered
    large = decoder._large
    assert large is None or len(large) <= BOUND
    assert len(decoder._buf) <= max(RECEIVE, BOUND + max(max_chunk, RECEIVE))


def outcome(
    data: bytes, sizes: Sequence[int], mode: str, threshold: int, length_prefixed: bool
) -> tuple[list[Packet], str | None]:
    """Decode *data* cut into chunks of *sizes* (cycled; empty: one chunk), checking the memory
    bound after every chunk; return the packets and the error code the stream ended with."""
    make = LengthPrefixedDecoder if length_prefixed else PacketDecoder
    decoder = make(limits=LIMITS, zero_copy_threshold=THRESHOLDS[threshold % len(THRESHOLDS)],
                   receive_size=RECEIVE)
    out: list[Packet] = []
    pos, i = 0, 0
    max_chunk = max(sizes, default=len(data))
    try:
        while pos < len(data):
            size = sizes[i % len(sizes)] if sizes else len(data)
            _push(decoder, data[pos : pos + size], mode, out)
            _check_bounds(decoder, max_chunk)
            pos += size
            i += 1
        decoder.feed_eof()
    except ProtocolError as exc:
        expect_code(exc, ERROR_CODES)
        check_failed(decoder, exc)
        return out, exc.error_code
    for packet in out:
        check_packet(packet)
    assert decoder.buffered == 0
    assert decoder.packets_decoded == len(out)
    return out, None


def stream_decode(data: bytes, length_prefixed: bool) -> None:
    """Any bytes as a stream: cut anyhow, the same packets and the same error as in one piece."""
    reader = Reader(data[:8])
    threshold = reader.uint(1)
    mode = MODES[reader.uint(1) % 3]
    sizes = [1 + reader.below(900) for _ in range(3)]
    body = data[8:]
    reference = outcome(body, [], "bytes", threshold, length_prefixed)
    assert outcome(body, sizes, mode, threshold, length_prefixed) == reference


def stream_of_packets(data: bytes, length_prefixed: bool) -> None:
    """A valid stream built from the input, then maybe damaged: intact, it decodes to exactly
    its packets however it is cut; damaged, it decodes as it does in one piece."""
    reader = Reader(data)
    pkts = [packet_from(reader) for _ in range(reader.below(6))]
    stream = bytearray(frame(pkts, length_prefixed))
    damaged = False
    for _ in range(reader.uint(1) % 4):
        if stream:
            stream[reader.below(len(stream))] ^= 1 + reader.uint(1) % 255
            damaged = True
    if reader.uint(1) & 1:
        del stream[reader.below(len(stream) + 1) :]
        damaged = True
    threshold = reader.uint(1)
    mode = MODES[reader.uint(1) % 3]
    sizes = [1 + reader.below(500) for _ in range(3)]
    got = outcome(bytes(stream), sizes, mode, threshold, length_prefixed)
    if damaged:
        assert got == outcome(bytes(stream), [], "bytes", threshold, length_prefixed)
    else:
        assert got == (pkts, None)


# --- running ----------------------------------------------------------------------------------


#: Whose code libFuzzer sees (its coverage feedback) by default: the sans-IO core.  A script
#: adds the libraries that read the peer's bytes for it (h11, aioquic) or the modules it drives.
#: Patching costs ~3 ms a function, so instrument_all() (~14000 functions, the standard library
#: and hypothesis included) would take a minute at every start; the core alone takes ~2 s.
INSTRUMENTED = ("msgtrans.core",)


def instrument(atheris: types.ModuleType, modules: Sequence[str] = INSTRUMENTED) -> None:
    """Give atheris's coverage instrumentation to every loaded function of *modules* (module
    names or their prefixes) and of the fuzz scripts themselves."""
    fuzz_dir = str(Path(__file__).resolve().parent)
    prefixes = tuple(modules) + tuple(f"{m}." for m in modules)
    count = 0
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        module = obj.__module__
        if module not in sys.modules:
            continue
        if not (module in modules or module.startswith(prefixes)
                or obj.__code__.co_filename.startswith(fuzz_dir)):
            continue
        try:
            atheris.instrument_func(obj)
        except Exception as exc:  # one odd function must not stop a run
            print(f"not instrumented: {obj!r}: {exc}", file=sys.stderr)
        count += 1
    print(f"INFO: instrumented {count} functions of {', '.join(modules)} and fuzz/",
          file=sys.stderr)


def main(one_input: Callable[[bytes], None], hypothesis_tests: Sequence[Callable[[], None]],
         instrumented: Sequence[str] = INSTRUMENTED) -> None:
    """Entry point of a fuzz_*.py script: atheris if it is installed, else a long hypothesis run.

    *instrumented*: the modules whose coverage guides atheris (see :func:`instrument`).
    ``--hypothesis`` forces the hypothesis run; ``--examples N`` sets its length (default 20000).
    Other arguments go to atheris (libFuzzer flags, corpus directories, a crash file to replay).
    """
    args = sys.argv[1:]
    force = "--hypothesis" in args
    examples = 20_000
    if "--examples" in args:
        examples = int(args[args.index("--examples") + 1])
    try:
        atheris = None if force else importlib.import_module("atheris")
    except ImportError:
        atheris = None
        print(
            "atheris is not installed: `pip install atheris` (Linux or macOS wheels) to fuzz with\n"
            f"coverage guidance. Running a longer hypothesis pass instead ({examples} examples "
            "per test).",
            file=sys.stderr,
        )
    if atheris is not None:
        instrument(atheris, instrumented)
        atheris.Setup([sys.argv[0], *args], one_input)
        atheris.Fuzz()
        return
    from hypothesis import HealthCheck, settings

    for test in hypothesis_tests:
        print(f"{test.__name__} ...", file=sys.stderr, flush=True)
        settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))(
            test
        )()
    print("no findings", file=sys.stderr)
