"""Per-notebook wall times of the book build, from `book/_build/executed/timings.json`.

`critneuron book --profile P` records each notebook's wall time, status and profile in that file
(a notebook run later under another profile overwrites its entry). This script prints them for
one profile (default quick), their sum, and each notebook's share; with --run it first runs
`critneuron book --profile P` (and times the whole command, HTML rendering included).

Usage:
    .venv/bin/python benchmarks/bench_book.py --profile quick          # read only
    CRITNEURON_DATA=/work/shared/data .venv/bin/python benchmarks/bench_book.py --profile quick --run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import environment, format_table, print_environment

ROOT = Path(__file__).resolve().parent.parent


def critneuron_command() -> list[str]:
    """The `critneuron` console script of this interpreter's environment (or `python -c` if absent)."""
    script = Path(sys.executable).with_name("critneuron")
    if script.is_file():
        return [str(script)]
    found = shutil.which("critneuron")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from critneuron.cli import main; sys.exit(main())"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="profile to run (--run) and to show")
    parser.add_argument("--run", action="store_true", help="first run `critneuron book --profile P`")
    parser.add_argument("--all", action="store_true", help="show entries of every profile")
    parser.add_argument("--book-dir", type=Path, default=ROOT / "book", help="the book folder")
    args = parser.parse_args(argv)

    print_environment(environment())
    executed = args.book_dir / "_build" / "executed"
    command_s, command_rc = None, 0
    if args.run:
        cmd = critneuron_command() + ["book", "--profile", args.profile, "--book-dir", str(args.book_dir)]
        print("running: " + " ".join(cmd), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT)
        command_s, command_rc = time.perf_counter() - start, done.returncode
        print(f"`critneuron book` exited with {done.returncode} after {command_s:.1f} s\n", flush=True)

    path = executed / "timings.json"
    if not path.is_file():
        print(f"no {path}: run `critneuron book --profile {args.profile}` (or this script with --run) first",
              file=sys.stderr)
        return 1
    timings = json.loads(path.read_text())
    rows = [{"notebook": name, **entry} for name, entry in sorted(timings.items())]
    shown = rows if args.all else [r for r in rows if r.get("profile") == args.profile]
    others = sorted({str(r.get("profile")) for r in rows} - {args.profile})
    if not shown:
        print(f"{path} has no entry for profile {args.profile!r} (profiles there: {', '.join(others)}); "
              "use --all to see them", file=sys.stderr)
        return 1
    total = sum(r["wall_s"] for r in shown if r.get("wall_s") is not None)
    for r in shown:
        r["share_pct"] = 100.0 * r["wall_s"] / total if total else None
    print(f"{path} ({'all profiles' if args.all else f'profile {args.profile}'}):\n")
    print(format_table(shown, [("notebook", "notebook", "s"), ("profile", "profile", "s"),
                               ("status", "status", "s"), ("wall_s", "wall s", ".1f"),
                               ("share_pct", "share %", ".1f"), ("finished", "finished (UTC)", "s")]))
    failed = [r["notebook"] for r in shown if r.get("status") != "ok"]
    print(f"\nnotebooks: {len(shown)}, sum of wall times: {total:.1f} s ({total / 60:.1f} min)"
          + (f"; not ok: {', '.join(failed)}" if failed else ""))
    if command_s is not None:
        print(f"whole `critneuron book` command: {command_s:.1f} s (adds process start-up and the HTML build)")
    if not args.all and others:
        print(f"(entries of other profiles not shown: {', '.join(others)}; --all shows them)")
    provenance = executed / "profile.json"
    if provenance.is_file():
        prov = json.loads(provenance.read_text())
        print(f"last build started: profile {prov.get('profile')}, {prov.get('date')}, commit {prov.get('git_commit')}")
        if prov.get("profile") != args.profile:
            print(f"note: the last build used profile {prov.get('profile')!r}; the times above may be older")
    return command_rc


if __name__ == "__main__":
    sys.exit(main())
