"""What a slow reader costs a server, with and without ``memory_limit``.

    python bench/bench_memory_limit.py            # every backend x tcp, tls, ws, quic; ~1 min
    python bench/bench_memory_limit.py --quick    # tcp and quic, smaller transfer; < 30 s

For each server backend (asyncio, trio, blocking) and protocol, a server process is started
with ``Transport(memory_limit=2 MiB)`` or with no limit.  Its application accepts one session
and reads nothing for ``--hold`` seconds while a client (asyncio, in this process) sends 64 KiB
messages as fast as it can; then the application reads every message (checking their order).
The server reports, as a table:

* ``rss+ MiB``: peak RSS growth of the server process while it was not reading (VmHWM after
  resetting it once the session was accepted; Linux ``/proc``);
* ``counted MiB``: the budget's peak counted bytes (queued inbound and outbound), ``-``
  without a limit;
* ``queued MiB``: what the session had queued for the application when reading began;
* ``sent MiB``: what the client got to send while the server did not read (the rest waited:
  backpressure);
* ``ok``: every message arrived, in order.

Not a test: the figures depend on the machine (kernel socket buffers, QUIC's windows).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE = 64 * 1024
LIMIT = 2 * 1024 * 1024
MIB = 1024 * 1024


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") * (SIZE // 4)


# --- the server process --------------------------------------------------------------------------


def _proc_status(field: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_hwm() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0 and later).
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def _config(lib: Any, proto: str, certs: tuple[str, str]) -> Any:
    cert, key = certs
    if proto == "tcp":
        return lib.TcpServerConfig("127.0.0.1:0")
    if proto == "tls":
        return lib.TcpServerConfig("127.0.0.1:0", tls=lib.ServerTlsConfig(cert, key))
    if proto == "ws":
        return lib.WebSocketServerConfig("127.0.0.1:0")
    return lib.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)


class _Figures:
    def __init__(self) -> None:
        self.base = 0
        self.out: dict[str, Any] = {}

    def accepted(self) -> None:
        _reset_hwm()
        self.base = _proc_status("VmRSS")

    def reading(self, transport: Any, session: Any) -> None:
        self.out["rss_growth"] = max(0, _proc_status("VmHWM") - self.base)
        self.out["queued"] = session.connection.session.receive_backlog[0]
        memory = transport.stats().memory
        self.out["counted_at_read"] = None if memory is None else memory.peak

    def done(self, transport: Any, ok: bool) -> None:
        memory = transport.stats().memory
        self.out["counted"] = None if memory is None else memory.peak
        self.out["ok"] = ok
        print(json.dumps(self.out), flush=True)


def _serve_sync(proto: str, limit: int | None, count: int, hold: float,
                certs: tuple[str, str]) -> None:
    import msgtrans.io_sync as lib

    figures = _Figures()
    with lib.Transport(memory_limit=limit) as transport:
        with transport.accept([_config(lib, proto, certs)]) as stream:
            print(stream.addresses[0][1], flush=True)
            session = stream.accept(timeout=10)
            figures.accepted()
            time.sleep(hold)
            figures.reading(transport, session)
            ok = all(session.receive(timeout=10).payload == numbered(i) for i in range(count))
            figures.done(transport, ok)
        transport.shutdown(2.0)


async def _serve_async(lib: Any, proto: str, limit: int | None, count: int, hold: float,
                       certs: tuple[str, str], sleep: Any) -> None:
    figures = _Figures()
    transport = lib.Transport(memory_limit=limit)
    stream = transport.accept([_config(lib, proto, certs)])
    await stream.start()
    print(stream.addresses[0][1], flush=True)
    session = await stream.__anext__()
    figures.accepted()
    await sleep(hold)
    figures.reading(transport, session)
    ok = True
    for i in range(count):
        ok = bytes((await session.receive()).payload) == numbered(i) and ok
    figures.done(transport, ok)
    await stream.aclose()
    await transport.shutdown(2.0)


def _server_main(backend: str, proto: str, limit: int | None, count: int, hold: float,
                 certs: tuple[str, str]) -> None:
    if backend == "sync":
        _serve_sync(proto, limit, count, hold, certs)
    elif backend == "asyncio":
        import msgtrans.io_asyncio as alib

        asyncio.run(_serve_async(alib, proto, limit, count, hold, certs, asyncio.sleep))
    else:
        import trio

        import msgtrans.io_trio as tlib

        async def main() -> None:
            async with tlib.Transport(memory_limit=limit) as transport:
                figures = _Figures()
                stream = transport.accept([_config(tlib, proto, certs)])
                await stream.start()
                print(stream.addresses[0][1], flush=True)
                session = await stream.__anext__()
                figures.accepted()
                await trio.sleep(hold)
                figures.reading(transport, session)
                ok = True
                for i in range(count):
                    ok = bytes((await session.receive()).payload) == numbered(i) and ok
                figures.done(transport, ok)
                await stream.aclose()
                await transport.shutdown(2.0)

        trio.run(main)


# --- the client (this process) -------------------------------------------------------------------


async def _client(proto: str, port: int, count: int, hold: float, ca: str) -> int:
    """Send *count* messages; return how many were queued within *hold* seconds."""
    import msgtrans.io_asyncio as lib

    path = "/" if proto == "ws" else ""
    query = f"?ca={ca}" if proto in ("tls", "quic") else ""
    transport = lib.Transport()
    session = await transport.connect(f"{proto}://localhost:{port}{path}{query}")
    start = time.monotonic()
    within = 0
    for i in range(count):
        await session.send(numbered(i))
        if time.monotonic() - start < hold:
            within = i + 1
    await session.close()
    await transport.shutdown(2.0)
    return within


def _run_one(backend: str, proto: str, limit: int | None, count: int, hold: float,
             certs: tuple[str, str]) -> dict[str, Any]:
    args = [sys.executable, __file__, "--serve", backend, proto, str(limit or 0), str(count),
            str(hold), *certs]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) as server:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        sent = asyncio.run(asyncio.wait_for(
            _client(proto, port, count, hold, certs[0]), timeout=60))
        line = server.stdout.readline()
        server.wait(timeout=30)
    result: dict[str, Any] = json.loads(line)
    result["sent"] = sent * SIZE
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tcp and quic, < 30 s")
    parser.add_argument("--hold", type=float, help="seconds the server does not read")
    parser.add_argument("--serve", nargs=7, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        backend, proto, limit, count, hold, cert, key = ns.serve
        _server_main(backend, proto, int(limit) or None, int(count), float(hold), (cert, key))
        return
    from msgtrans.certs import write_self_signed

    protocols = ["tcp", "quic"] if ns.quick else ["tcp", "tls", "ws", "quic"]
    count = 160 if ns.quick else 320  # 10 or 20 MiB
    hold = ns.hold if ns.hold is not None else (0.4 if ns.quick else 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = write_self_signed(Path(tmp))
        certs = (str(cert), str(key))
        print(f"{count} x 64 KiB messages; the server reads nothing for {hold:g} s; "
              f"limit {LIMIT // MIB} MiB or none")
        header = (f"{'backend':8} {'proto':5} {'limit':>6} {'rss+ MiB':>9} {'counted MiB':>12} "
                  f"{'queued MiB':>11} {'sent MiB':>9} {'ok':>3}")
        print(header)
        print("-" * len(header))
        for backend in ("asyncio", "trio", "sync"):
            for proto in protocols:
                for limit in (LIMIT, None):
                    r = _run_one(backend, proto, limit, count, hold, certs)
                    counted = "-" if r["counted"] is None else f"{r['counted'] / MIB:.2f}"
                    print(f"{backend:8} {proto:5} {'2 MiB' if limit else 'none':>6} "
                          f"{r['rss_growth'] / MIB:9.2f} {counted:>12} "
                          f"{r['queued'] / MIB:11.2f} {r['sent'] / MIB:9.2f} "
                          f"{'yes' if r['ok'] else 'NO':>3}", flush=True)


if __name__ == "__main__":
    main()
