"""Mutation score of the program's lowering and formulation (`critneuron/mip/spec.py`,
`bounds.py`, `builder.py`) and of `critneuron/pruning/masks.py` against the fast tests (not part
of CI): mutmut mutates a copy of the package, runs the tests that reach each mutant, and this
script prints killed / survived / timed out and the wall time, and the surviving mutants.

All mutants take hours on 2 cores; `--sample N` draws N of them (seeded) and says so, and
`--budget-s` stops starting new chunks of them after that many seconds.

    pip install -e '.[dev,mutation]'
    python benchmarks/mutation.py --sample 200 --seed 0        # prints the figures
    mutmut show NAME   (in --workdir)                          # a surviving mutant's diff
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from _common import environment, print_environment

REPO = Path(__file__).resolve().parents[1]
MUTATED = ("critneuron/mip/spec.py", "critneuron/mip/bounds.py", "critneuron/mip/builder.py",
           "critneuron/pruning/masks.py")
FAST_TESTS = ("tests/test_oracle.py", "tests/test_failures.py", "tests/test_properties.py", "tests/test_prune.py",
              "tests/test_compact.py", "tests/test_scoring.py")
RESULT = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


def _setup(workdir: Path) -> None:
    """A copy of the package and its tests, with mutmut's settings in setup.cfg."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
    for folder in ("critneuron", "tests"):
        shutil.copytree(REPO / folder, workdir / folder, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", workdir / "pyproject.toml")
    listed = lambda items: "\n    ".join(items)  # noqa: E731
    (workdir / "setup.cfg").write_text(
        f"[mutmut]\nsource_paths=critneuron\nonly_mutate={listed(MUTATED)}\n"
        f"pytest_add_cli_args_test_selection={listed(FAST_TESTS)}\n"
        "pytest_add_cli_args=-p\n    no:cacheprovider\n    -q\nprocess_isolation=forkserver\n")


def _mutmut(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # One OpenMP thread: forked test processes must not inherit a thread pool; the few examples
    # of the `mutation` hypothesis profile keep each mutant's run short.
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(workdir / "mutants")}
    mutmut = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(mutmut), *args], cwd=workdir, env=env, capture_output=True, text=True)


def _results(workdir: Path) -> dict[str, str]:
    out = _mutmut(workdir, "results", "--all", "true").stdout
    return {m.group(1): m.group(2).strip() for m in map(RESULT.match, out.splitlines()) if m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="mutants to run, drawn at random (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=1500.0,
                        help="start no new chunk of 25 mutants after this many seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/critneuron-mutation"))
    parser.add_argument("--only", nargs="+", default=None, help="run these mutants (e.g. a run's survivors) instead")
    args = parser.parse_args()
    print_environment(environment())
    print(f"mutmut {version('mutmut')}, hypothesis {version('hypothesis')} (profile 'mutation')")
    _setup(args.workdir)
    # mutmut generates the mutants and records which tests reach which function on its first
    # run; a filter that matches nothing stops it there.
    for _ in range(2):  # the first stats collection can see the installed package; the second never does
        _mutmut(args.workdir, "run", "generate-only-matches-nothing*")
        names = sorted(_results(args.workdir))
        if names:
            break
    # in drawn order, so that a time budget cuts the sample at random, not one module's mutants
    sample = random.Random(args.seed).sample(names, args.sample if 0 < args.sample < len(names) else len(names))
    if args.only:
        sample = [name for name in args.only if name in names]
    start, codes, done = time.perf_counter(), set(), []
    for chunk in range(0, len(sample), 25):
        if time.perf_counter() - start > args.budget_s:
            break
        names_run = sample[chunk:chunk + 25]
        codes.add(_mutmut(args.workdir, "run", "--max-children", str(args.max_children), *names_run).returncode)
        done += names_run
    wall = time.perf_counter() - start
    results = _results(args.workdir)
    left_out = len(sample) - len(done)
    sample = done
    counts = collections.Counter(results[name] for name in sample)
    per_file = collections.Counter(name.split(".x")[0] for name in sample)
    print(f"mutants: {len(names)} in {', '.join(MUTATED)}; run: {len(sample)}"
          f"{' (given by --only)' if args.only else f' (a seeded sample, seed {args.seed})' if len(sample) < len(names) else ''}"
          f"{f'; {left_out} more drawn but not run (time budget)' if left_out else ''}")
    print("run per module: " + ", ".join(f"{k} {v}" for k, v in sorted(per_file.items())))
    print(f"killed: {counts['killed']}  survived: {counts['survived']}  timed out: {counts['timeout']}  "
          f"other: {sum(v for k, v in counts.items() if k not in ('killed', 'survived', 'timeout'))} "
          f"({dict(counts)})")
    print(f"wall time: {wall:.0f} s (mutmut exit codes {sorted(codes)}); fast tests: {', '.join(FAST_TESTS)}")
    for name in sorted(sample):
        if results[name] != "killed":
            print(f"  {results[name]}: {name}")


if __name__ == "__main__":
    main()
