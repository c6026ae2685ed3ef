"""Write the seed corpus of every fuzz script: ``fuzz/corpus/<script>/<sha1>``.

    python fuzz/make_corpus.py [--out DIR]

Each seed is an input of the script's ``one_input`` (first byte: the target), made from real
traffic so that the fuzzer starts past the checks a random input fails: real packets and
streams of them, real WebSocket requests, answers and frames, a real TLS ClientHello and
server flight, real QUIC Initials, example URLs and TOML files.  A script's directory is
rewritten each time (the handshakes are random, so the files change; commit them once).
The committed corpus stays small (well under 2 MB); a long run's corpus lives elsewhere
(``run.py --out``).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from msgtrans.core.compression import compress  # noqa: E402
from msgtrans.core.framing import length_prefix  # noqa: E402
from msgtrans.core.packet import Compression, Packet, PacketType  # noqa: E402

RNG = random.Random(17)


def packets() -> list[Packet]:
    return [
        Packet(PacketType.ONE_WAY, 1, payload=b"hello"),
        Packet(PacketType.REQUEST, 2, biz_type=7, ext_header=b"\x01\x02", payload=b"ping"),
        Packet(PacketType.RESPONSE, 2, payload=b"pong" * 50),
        Packet(PacketType.ONE_WAY, 3, payload=b"z" * 600, compression=Compression.ZLIB),
        Packet(PacketType.ONE_WAY, 4, payload=bytes(RNG.randrange(256) for _ in range(300))),
        Packet(PacketType.REQUEST, 5, payload=b""),
    ]


def wire(pkts: Iterable[Packet], prefixed: bool = False) -> bytes:
    return b"".join((length_prefix(len(w)) + w) if prefixed else w
                    for w in (p.encode() for p in pkts))


def noise(n: int) -> bytes:
    return bytes(RNG.randrange(256) for _ in range(n))


def seeds_packet() -> list[bytes]:
    out = [b"\x00" + p.encode() for p in packets()]
    out += [b"\x01" + noise(n) for n in (20, 200, 900)]
    out += [b"\x02\x00\x10\x00\x00" + compress(Compression.ZLIB, b"abc" * 300),
            b"\x02\x01\x10\x00\x01" + b"text to compress" * 20]
    return out


def seeds_framing() -> list[bytes]:
    pkts = packets()
    head = b"\x00" * 8
    return [b"\x00" + head + wire(pkts), b"\x02" + head + wire(pkts, True),
            b"\x00" + b"\x00\x01\x00\x05\x00\x40\x01\x00" + wire(pkts),
            b"\x01" + noise(300), b"\x03" + noise(300)]


def seeds_tcp() -> list[bytes]:
    pkts = packets()
    out = []
    for server in (0, 1):
        for path in (0, 1, 2):
            out.append(b"\x00" + bytes([server, path, 1, 0, 2, 0, 7, 0]) + wire(pkts))
    out += [b"\x01" + noise(200), b"\x01\x01\x02" + noise(400)]
    return out


def seeds_tls() -> list[bytes]:
    from fuzz_tls import flights

    hello, answer = flights()
    return [
        b"\x00\x01\x00\x00" + hello,            # a real ClientHello at a server, in one piece
        b"\x00\x05\x00\x03\x00\x10\x00\x40\x00\x08" + hello,   # in cuts, via get_buffer
        b"\x00\x00\x00\x00" + answer,           # a real server flight at a client
        b"\x00\x03\x00\x00" + noise(40),         # mutated ClientHello
        b"\x01\x01" + noise(60), b"\x01\x03" + noise(60), b"\x01\x00" + noise(60),
        b"\x01\x07" + noise(120),
    ]


def seeds_websocket() -> list[bytes]:
    from fuzz_websocket import LIMITS, VALID_REQUEST, new_server, real_handshake

    from msgtrans.core.websocket import WebSocketClientMachine

    _client, request, answer = real_handshake(3)
    # Frames as a real client sends them, after a real handshake.
    server = new_server()
    server.start(0.0)
    client2 = WebSocketClientMachine("example.com", "/ws", limits=LIMITS, ping_interval=None)
    client2.start(0.0)
    server.receive_data(b"".join(bytes(b) for b in client2.data_to_send()), 0.0)
    client2.receive_data(b"".join(bytes(b) for b in server.data_to_send()), 0.0)
    for p in packets()[:4]:
        client2.send_packet(p)
    client2.close(1000, "bye")
    frames = b"".join(bytes(b) for b in client2.data_to_send())
    return [
        b"\x00" + VALID_REQUEST, b"\x00" + request, b"\x00" + request[:40],
        b"\x01" + frames, b"\x81" + frames,
        b"\x02" + answer, b"\x82" + answer,
        b"\x03\x01\x00", b"\x03\x03\x02" + noise(30), b"\x03\x00\x03" + noise(30),
        b"\x03\x06\x01" + noise(30),
    ]


def seeds_quic() -> list[bytes]:
    return [noise(n) for n in (10, 100, 400)] + [b"\x01" * 40, b"\x00\x00\x04" + noise(200)]


def seeds_quic_endpoint() -> list[bytes]:
    from fuzz_quic_endpoint import initials

    # Real Initials as the recipe's raw datagrams (kind 0: two length bytes, then the bytes),
    # from peer 1, then the same Initial again from peer 2.
    out = [b"\x00" + bytes([0, variant, 2]) + b"".join(
        bytes([peer, 0]) + len(gram).to_bytes(2, "big") + gram + b"\x00" for peer in (1, 2))
        for variant, gram in enumerate(initials()[:3])]
    for flags in (0, 1):
        for variant in range(7):
            out.append(b"\x00" + bytes([flags, variant, 12]) + noise(60))
    out += [b"\x00\x00\x00\x08" + b"\x01\x00\x00\x00" * 8,   # real Initials, one after another
            b"\x00\x01\x00\x10" + b"\x03\x00\x00\x00\x20" * 8,  # short headers to routed ids
            b"\x07" + noise(40)]
    return out


URLS = [
    "tcp://127.0.0.1:9000", "tcp://localhost:9000?nodelay=0&keepalive=false",
    "tls://example.com:9443?verify=0&server_name=x&connect_timeout=2.5",
    "ws://127.0.0.1/ws?x=1", "wss://[::1]:8443/a/b?connect_timeout=1&verify=1",
    "quic://127.0.0.1:4433?idle_timeout=10&closing_period=0&loopback_datagram_size=none",
    "quic://0.0.0.0:0?retry=auto&max_sessions=10", "ws://*:0/*", "tcp://[::]:0?backlog=128",
    "tcp://host", "http://x:1", "tcp://:1", "ws://h:99999/",
]
TOMLS = [
    '[transport]\nrequest_timeout = 5.0\nconnection_pool = [2, 64, 16]\n'
    'receive_queue = { max_messages = 256, max_bytes = 4194304 }\n'
    'session_settings = { heartbeat_interval = 15.0 }\n\n[serve]\ntcp = "0.0.0.0:9000"\n'
    'backend = "trio"\n',
    '[transport]\ncompression = { threshold = 1024, method = "zstd" }\nmax_payload = 65536\n',
    "[other]\nx = 1\n", "not toml = = =\n",
]


def seeds_config() -> list[bytes]:
    out = [b"\x00\x00" + url.encode() for url in URLS]
    out += [b"\x01" + noise(12) for _ in range(4)]
    out += [b"\x02\x00" + text.encode() for text in TOMLS]
    out += [b"\x02\x01\x03" + noise(20), b"\x03\x03" + noise(30)]
    return out


SEEDS = {
    "fuzz_packet": seeds_packet, "fuzz_framing": seeds_framing, "fuzz_tcp": seeds_tcp,
    "fuzz_tls": seeds_tls, "fuzz_websocket": seeds_websocket, "fuzz_quic": seeds_quic,
    "fuzz_quic_endpoint": seeds_quic_endpoint, "fuzz_config": seeds_config,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    total = 0
    for name, make in SEEDS.items():
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        seeds = make()
        for seed in seeds:
            (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
            total += len(seed)
        print(f"{name}: {len(seeds)} seeds")
    print(f"{total} bytes in {args.out}")


if __name__ == "__main__":
    main()
