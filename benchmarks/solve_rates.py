"""Solve rates for `critneuron book --plan`, read from a result store: per model, width, part
(whole network or a block's name) and mode, the median seconds of the stored scoring MIPs
(bounds + build + solve; a block's wall time), written into the rates file's "solves" section.

The model of a score is found through its weights' hash in the store's trainings. Failed solves
are not stored as scores, so a part that fails (e.g. a full-width VGG-16 deep block at its time
limit) has no rate and the plan takes its time limit. Scores solved while other jobs shared the
machine are slower than alone: the figures are wall seconds of one solver thread.

Usage:
    CRITNEURON_DATA=../shared/data .venv/bin/python benchmarks/solve_rates.py --store results \
        --rates benchmarks/rates.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from critneuron.machinery.rates import solve_key


def _runs(root: Path, kind: str):
    folder = root / kind
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (run / "result.json").is_file():
            yield (json.loads((run / name).read_text()) for name in ("config.json", "meta.json", "result.json"))


def harvest(root: Path) -> dict[str, dict]:
    """Median, maximum and count of the stored solve seconds per `solve_key`."""
    models = {}
    for config, _meta, result in _runs(root, "train"):
        if "weights_hash" in result:
            models[result["weights_hash"]] = (config["model"]["name"], config["model"]["width"])
    seconds: dict[str, list[float]] = {}
    for config, meta, result in _runs(root, "score"):
        model = models.get(meta.get("inputs", {}).get("weights"))
        if model is None:
            continue
        prov = result["provenance"]
        took = prov.get("wall_seconds", sum(prov["seconds"].values()))
        seconds.setdefault(solve_key(*model, config.get("block", "whole"), config["mode"]), []).append(took)
    return {key: {"seconds": statistics.median(v), "max_seconds": max(v), "solves": len(v)}
            for key, v in sorted(seconds.items())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("results"), help="the result store to read")
    parser.add_argument("--rates", type=Path, default=Path("benchmarks/rates.json"), help="the rates file to update")
    args = parser.parse_args(argv)
    rates = harvest(args.store)
    for key, rate in rates.items():
        print(f"{key:<36} median {rate['seconds']:8.2f} s  max {rate['max_seconds']:8.2f} s  ({rate['solves']} solves)")
    data = json.loads(args.rates.read_text()) if args.rates.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    data["solves"] = {"how": "benchmarks/solve_rates.py: median wall seconds of the scoring MIPs stored in a result "
                             "store (one solver thread; the machine shared with other jobs)",
                      "store": str(args.store.resolve()), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "commit": commit, "rates": rates}
    args.rates.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(rates)} solve rates written to {args.rates}")


if __name__ == "__main__":
    main()
