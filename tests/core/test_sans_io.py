"""The one rule of the core: no I/O modules, no clock reads, works with event loops unimportable."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import msgtrans.core

CORE = pathlib.Path(msgtrans.core.__file__).parent
FORBIDDEN_MODULES = {
    "socket", "select", "selectors", "threading", "_thread", "asyncio", "trio", "anyio",
    "subprocess", "multiprocessing", "concurrent",
}
CLOCKS = {
    "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
    "process_time", "process_time_ns", "thread_time", "thread_time_ns", "clock_gettime",
    "clock_gettime_ns", "sleep",
}
DATETIME_CLOCKS = {"now", "utcnow", "today"}


def _bound_names(tree: ast.Module, module: str) -> set[str]:
    """Local names bound to *module* or to a name from it (``import time as t``,
    ``from datetime import datetime``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == module}
        elif isinstance(node, ast.ImportFrom) and node.module == module and node.level == 0:
            names |= {a.asname or a.name for a in node.names}
    return names


def violations(source: str, name: str) -> list[str]:
    """Every forbidden import and clock read in *source*, as ``file:line what``."""
    tree = ast.parse(source)
    time_names = {n for n in _bound_names(tree, "time") if n == "time" or n not in CLOCKS}
    datetime_names = {"datetime", "date"} | _bound_names(tree, "datetime")
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_MODULES:
                found.append(f"{where} imports {node.module}")
            if root == "time":
                found += [f"{where} imports the clock time.{a.name}" for a in node.names
                          if a.name in CLOCKS or a.name == "*"]
        elif isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id in time_names and node.attr in CLOCKS:
                found.append(f"{where} reads the clock ({base.id}.{node.attr})")
            # datetime.now(), date.today(), datetime.datetime.now() ...
            base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if base_name in datetime_names and node.attr in DATETIME_CLOCKS:
                found.append(f"{where} reads the clock ({base_name}.{node.attr})")
        elif isinstance(node, ast.Call) and node.args:
            # importlib.import_module("socket") and __import__("socket") are imports too.
            func = node.func
            func_name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            target = node.args[0]
            if (func_name in {"import_module", "__import__"}
                    and isinstance(target, ast.Constant) and isinstance(target.value, str)
                    and target.value.split(".")[0] in FORBIDDEN_MODULES):
                found.append(f"{where} imports {target.value}")
    return found


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ("import socket\nimport asyncio.events\nimport os, threading\n", 3),
        ("from asyncio import sleep\nfrom concurrent.futures import Future\n", 2),
        ("import time\nx = time.monotonic()\ny = time.perf_counter_ns()\n", 2),
        ("import time as t\nt.sleep(1)\n", 1),
        ("from time import monotonic, strftime\n", 1),
        ("from time import *\n", 1),
        ("import datetime\nd = datetime.datetime.now()\ne = datetime.date.today()\n", 2),
        ("from datetime import datetime as dt\nd = dt.utcnow()\n", 1),
        ("import importlib\nimportlib.import_module('selectors')\n__import__('trio')\n", 2),
        # allowed: the standard library's ssl and logging, pure time functions, relative imports
        ("import ssl\nimport logging\nfrom . import socket\n", 0),
        ("import time\ns = time.strftime('%Y', time.gmtime(0))\n", 0),
        ("from datetime import timedelta\nd = timedelta(seconds=1)\n", 0),
        ("def f(now: float) -> float:\n    return now + 1\n", 0),
    ],
)
def test_checker_catches_violations(source: str, count: int) -> None:
    assert len(violations(source, "example.py")) == count, violations(source, "example.py")


def test_core_imports_no_io_and_reads_no_clock() -> None:
    # Other modules join the core over time: check every file there is, not a list.
    files = sorted(CORE.rglob("*.py"))
    assert {"packet.py", "framing.py", "compression.py", "errors.py"} <= {f.name for f in files}
    found = [v for f in files for v in violations(f.read_text(encoding="utf-8"),
                                                  str(f.relative_to(CORE)))]
    assert found == []


BLOCKED_RUN = textwrap.dedent(
    """
    import importlib, os, pkgutil, sys, sysconfig

    BLOCKED = {"asyncio", "trio", "anyio", "selectors"}
    STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
    SITE = {os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib")}

    def importer():
        # The first frame outside the import machinery is the module doing the import.
        frame = sys._getframe(2)
        while frame is not None and (
            frame.f_code.co_filename.startswith("<frozen")
            or frame.f_globals.get("__name__", "").startswith("importlib")
        ):
            frame = frame.f_back
        return frame

    def from_stdlib(frame):
        path = os.path.realpath(frame.f_code.co_filename) if frame else ""
        return path.startswith(STDLIB) and not any(path.startswith(s) for s in SITE)

    class Blocker:
        seen = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in BLOCKED:
                return None
            frame = importer()
            # The standard library may pull these in behind the scenes (ssl imports socket,
            # which imports selectors): the rule is about what msgtrans imports itself.
            if from_stdlib(frame):
                self.seen.append((name, frame.f_globals.get("__name__")))
                return None
            who = frame.f_globals.get("__name__") if frame else "?"
            raise ImportError(f"{name} is blocked: imported by {who}")

    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    sys.meta_path.insert(0, Blocker())

    import msgtrans.core as core
    names = [info.name for info in pkgutil.walk_packages(core.__path__, "msgtrans.core.")]
    for name in names:
        importlib.import_module(name)

    # ...and use it: encode, decode, run both stream decoders.
    packet = core.Packet(core.PacketType.REQUEST, 1, 2, b"x" * 100_000, b"ext",
                         flags=core.PacketFlags.HIGH_PRIORITY)
    small = core.Packet(core.PacketType.ONE_WAY, 2, 0, b"hi", compression=core.Compression.ZLIB)
    wire = packet.encode() + small.encode()
    assert core.Packet.decode(small.encode()) == small
    decoder = core.PacketDecoder()
    got = []
    for i in range(0, len(wire), 1000):
        got += decoder.feed(wire[i : i + 1000])
    decoder.feed_eof()
    assert got == [packet, small], got
    quic = core.LengthPrefixedDecoder()
    framed = b"".join(core.length_prefix(len(w)) + w for w in (packet.encode(), small.encode()))
    assert quic.feed(framed) == [packet, small]
    ids = core.MessageIdCounter()
    assert ids.next() == 1

    direct = {m.split(".")[0] for m in sys.modules} & (BLOCKED - {"selectors"})
    assert not direct, f"loaded although blocked: {direct}"
    print("ok", len(names), "modules;", "allowed for the stdlib:", sorted(set(Blocker.seen)))
    """
)


def test_core_works_with_event_loops_unimportable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN], capture_output=True, text=True, timeout=120,
        check=False, cwd=CORE.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok "), result.stdout


def test_the_blocker_blocks() -> None:
    # Guard against a blocker that lets everything through: a direct import must fail.
    script = BLOCKED_RUN.replace("import msgtrans.core as core", "import asyncio\nraise SystemExit")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
        cwd=CORE.parent.parent,
    )
    assert result.returncode != 0
    assert "asyncio is blocked" in result.stderr
