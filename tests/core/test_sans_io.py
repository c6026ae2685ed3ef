"""The one rule of the core: no I/O modules, no clock reads, works with event loops unimportable."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import msgtrans.core

CORE = pathlib.Path(msgtrans.core.__file__).parent
FORBIDDEN_MODULES = {"socket", "select", "selectors", "threading", "asyncio", "trio", "anyio",
                     "subprocess"}
CLOCK = {"time", "monotonic", "perf_counter", "sleep", "time_ns", "monotonic_ns",
         "perf_counter_ns", "process_time"}


def violations(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_MODULES:
                found.append(f"{name}:{node.lineno} imports {node.module}")
            if root == "time" and any(a.name in CLOCK for a in node.names):
                found.append(f"{name}:{node.lineno} imports a clock from time")
            if root == "datetime":
                found.append(f"{name}:{node.lineno} imports datetime (a clock)")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "time" and node.attr in CLOCK):
            found.append(f"{name}:{node.lineno} reads the clock (time.{node.attr})")
    return found


def test_checker_catches_violations() -> None:
    bad = "import socket\nfrom asyncio import sleep\nimport time\nx = time.monotonic()\n"
    assert len(violations(bad, "bad.py")) == 3
    assert violations("import ssl\nimport logging\n", "ok.py") == []


def test_core_imports_no_io_and_reads_no_clock() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 8
    found = [v for f in files for v in violations(f.read_text(), f.name)]
    assert found == []


def test_core_works_with_event_loops_unimportable() -> None:
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        # The standard library's ssl imports socket, which imports selectors: that indirect
        # use is allowed, so it is loaded before the blocker goes in.
        import ssl

        BLOCKED = {"asyncio", "trio", "anyio", "selectors"}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked for this test")
                return None

        for mod in list(sys.modules):
            if mod.split(".")[0] in BLOCKED - {"selectors"}:
                del sys.modules[mod]
        sys.meta_path.insert(0, Blocker())

        import msgtrans.core as core
        for info in pkgutil.walk_packages(core.__path__, "msgtrans.core."):
            importlib.import_module(info.name)
        packet = core.Packet(core.PacketType.REQUEST, 1, 2, b"x" * 100_000)
        decoder = core.PacketDecoder()
        assert decoder.feed(packet.encode()) == [packet]
        loaded = {m.split(".")[0] for m in sys.modules} & (BLOCKED - {"selectors"})
        assert not loaded, f"blocked modules loaded: {loaded}"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
