"""Run the fuzz scripts under atheris for a set time and report what each did.

    python fuzz/run.py --seconds 3600 [--jobs N] [--out DIR] [--seed-from OUT] [SCRIPT...]

Each script (default: every ``fuzz/fuzz_*.py``; a name such as ``tcp`` or ``fuzz_tcp.py``
picks one) runs under ``nice`` with its own working corpus, seeded from a copy of
``fuzz/corpus/<script>/`` (the committed corpus is never written), and its own artifact
directory, *--jobs* at a time.  Then one table, a row per script::

    script               execs  exec/s   cov     ft  corpus  findings  exit
    fuzz_tcp            812345     225  1034   5012     388         0     0

``execs`` and ``exec/s`` come from libFuzzer's last stats line (``#N ... exec/s: E``), ``cov``
and ``ft`` are its coverage counters (edges and features) on that line, ``corpus`` the inputs
in the working corpus at the end, ``findings`` the crash, timeout and OOM files written.  Each
script's log, corpus and findings stay under ``--out`` (printed at the end); the run exits 1
when anything was found, and a finding replays with ``python fuzz/<script>.py <file>``.

To keep what a long run learnt, copy new inputs back with libFuzzer's merge (it keeps only
inputs that add coverage):

    python fuzz/fuzz_tcp.py -merge=1 fuzz/corpus/fuzz_tcp OUT/fuzz_tcp/corpus
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")
STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)")
DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


@dataclass
class Result:
    script: str
    execs: int = 0
    exec_per_s: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    findings: tuple[str, ...] = ()
    returncode: int | None = None
    log: Path | None = None

    def row(self) -> str:
        return (f"{self.script:<20} {self.execs:>9} {self.exec_per_s:>7} {self.cov:>5} "
                f"{self.ft:>6} {self.corpus:>7} {len(self.findings):>9} {self.returncode!s:>5}")


HEADER = (f"{'script':<20} {'execs':>9} {'exec/s':>7} {'cov':>5} {'ft':>6} {'corpus':>7} "
          f"{'findings':>9} {'exit':>5}")


def scripts(names: Sequence[str] = ()) -> list[Path]:
    """The fuzz scripts named (``tcp``, ``fuzz_tcp``, ``fuzz_tcp.py``), default all."""
    every = sorted(HERE.glob("fuzz_*.py"))
    if not names:
        return every
    out = []
    for name in names:
        stem = Path(name).stem
        stem = stem if stem.startswith("fuzz_") else f"fuzz_{stem}"
        path = HERE / f"{stem}.py"
        if not path.exists():
            raise SystemExit(f"no fuzz script {path.name} (have: "
                             f"{', '.join(p.stem for p in every)})")
        out.append(path)
    return out


def parse_log(text: str, result: Result) -> None:
    """Fill *result* from libFuzzer's output (its last stats line and its Done line)."""
    for line in text.splitlines():
        if m := STATS.match(line):
            result.execs, result.cov, result.ft = int(m[1]), int(m[2]), int(m[3])
            result.exec_per_s = int(m[5])
        elif m := DONE.match(line):
            result.execs = int(m[1])
            seconds = int(m[2])
            if seconds:
                result.exec_per_s = result.execs // seconds


def run_script(script: Path, seconds: float, workdir: Path, *, runs: int | None = None,
               nice: int = 10, extra: Sequence[str] = (), timeout: float | None = None,
               seed_from: Path | None = None) -> Result:
    """Fuzz *script* for *seconds* (and at most *runs* inputs) in *workdir*: its corpus there
    (copied from fuzz/corpus/<script>/, and from *seed_from*/<script>/corpus/ when given), its
    findings in workdir/artifacts/, its log in workdir/log.txt."""
    name = script.stem
    corpus = workdir / "corpus"
    artifacts = workdir / "artifacts"
    shutil.rmtree(workdir, ignore_errors=True)
    artifacts.mkdir(parents=True)
    seed = CORPUS / name
    corpus.mkdir()
    for folder in (seed, seed_from / name / "corpus" if seed_from is not None else None):
        if folder is not None and folder.is_dir():
            shutil.copytree(folder, corpus, dirs_exist_ok=True)
    cmd = [sys.executable, str(script), f"-max_total_time={max(1, int(seconds))}",
           f"-artifact_prefix={artifacts}/", "-timeout=60", "-rss_limit_mb=3072",
           "-print_final_stats=1", *([f"-runs={runs}"] if runs is not None else []), *extra,
           str(corpus)]
    if nice and hasattr(os, "nice"):
        cmd = ["nice", "-n", str(nice), *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    log = workdir / "log.txt"
    result = Result(name, log=log)
    with open(log, "wb") as out:
        try:
            proc = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=workdir, env=env, timeout=timeout or seconds + 180)
            result.returncode = proc.returncode
        except subprocess.TimeoutExpired:
            result.returncode = None
    parse_log(log.read_text(errors="replace"), result)
    result.corpus = sum(1 for p in corpus.iterdir() if p.is_file())
    result.findings = tuple(sorted(str(p) for p in artifacts.iterdir()
                                   if p.name.startswith(FINDING_PREFIXES)))
    return result


def run_all(paths: Sequence[Path], seconds: float, out: Path, jobs: int, **kwargs: object
            ) -> list[Result]:
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_script, p, seconds, out / p.stem, **kwargs)  # type: ignore[arg-type]
                   for p in paths]
        return [f.result() for f in futures]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="*", help="fuzz scripts (default: every fuzz_*.py)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per script (default 60)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="scripts at once (default: the number of CPUs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where corpora, findings and logs go (default: a new temp dir)")
    parser.add_argument("--nice", type=int, default=10, help="niceness (default 10)")
    parser.add_argument("--seed-from", type=Path, default=None, metavar="OUT",
                        help="also seed each corpus from an earlier run's --out (to go on)")
    args = parser.parse_args(argv)
    try:
        import atheris  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris (Linux wheels)", file=sys.stderr)
        return 2
    paths = scripts(args.scripts)
    out = args.out or Path(tempfile.mkdtemp(prefix="msgtrans-fuzz-"))
    start = time.monotonic()
    print(f"fuzzing {len(paths)} scripts for {args.seconds:g} s each, {args.jobs} at a time; "
          f"output in {out}", flush=True)
    if args.seed_from is not None and args.seed_from.resolve() == out.resolve():
        raise SystemExit("--seed-from must not be --out (the run starts by clearing it)")
    results = run_all(paths, args.seconds, out, args.jobs, nice=args.nice,
                      seed_from=args.seed_from)
    print(HEADER)
    for r in results:
        print(r.row())
    for r in results:
        for finding in r.findings:
            print(f"FINDING {r.script}: {finding}  (replay: python fuzz/{r.script}.py {finding})")
        if r.returncode not in (0,) and not r.findings:
            print(f"{r.script}: exit {r.returncode}, see {r.log}")
    print(f"{time.monotonic() - start:.0f} s; logs, corpora and findings in {out}")
    return 1 if any(r.findings or r.returncode != 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
