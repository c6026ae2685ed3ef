"""Every fuzz script runs under atheris for a moment over its seed corpus and finds nothing.

The long runs are ``python fuzz/run.py --seconds 3600`` (by hand); this only proves each
script still starts under libFuzzer, replays its committed corpus (fuzz/corpus/<script>/,
copied: the committed files are never written) and survives a few seconds of mutation.  The
hypothesis versions of the same targets run in the ordinary test pass (pytest collects
fuzz/fuzz_*.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import run  # noqa: E402  (fuzz/run.py, the runner)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (Linux wheels only: the test extra installs it there)",
)

SECONDS = 2


@pytest.mark.parametrize("script", run.scripts(), ids=lambda p: p.stem)
def test_fuzz_script_smoke(script: Path, tmp_path: Path) -> None:
    corpus = FUZZ / "corpus" / script.stem
    seeds = sorted(corpus.iterdir()) if corpus.is_dir() else []
    assert seeds, f"no seed corpus for {script.stem}: run python fuzz/make_corpus.py"
    before = {p.name: p.read_bytes() for p in seeds}
    result = run.run_script(script, SECONDS, tmp_path / script.stem, runs=20_000, nice=0,
                            timeout=60)
    log = result.log.read_text(errors="replace")[-3000:] if result.log else ""
    assert not result.findings, f"{script.stem} found {result.findings}:\n{log}"
    assert result.returncode == 0, f"{script.stem} exited {result.returncode}:\n{log}"
    # It ran the seeds (and then mutated them), with coverage feedback from msgtrans.
    assert result.execs >= len(seeds) and result.cov > 0, log
    assert {p.name: p.read_bytes() for p in sorted(corpus.iterdir())} == before
