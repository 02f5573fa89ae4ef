"""The CPU time a result store's records say they took, by stage and network (issue 24: the
compute behind the shipped results, measured rather than estimated).

Counted, from each complete and fresh run's own record, one thread each:

- trainings and retrainings: `train_seconds` (epochs with their validation passes);
- scores (whole networks, blocks, per-class programs): `provenance.seconds` (bounds, build and
  solve), attributed to the network whose weights they scored.

Not recorded, so not counted: the evaluations of pruned, random and critical networks, fine-tuning,
the baselines of the budget sweeps and the tests on held-out data after each training. The
`--plan` estimates include them, so they are higher.

Usage:
    .venv/bin/python benchmarks/recorded_compute.py --store shipped
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from critneuron.experiments.store import Store


def _network(config: dict) -> str:
    model = config["model"]
    width = f" ×{model['width']:g}" if model.get("width", 1) != 1 else ""
    return f"{model['name']}{width} {config['data']['dataset']}"


def recorded_seconds(store: Store) -> dict[tuple[str, str], list[float]]:
    """Seconds of every fresh complete training, retraining and score, by (stage, network)."""
    runs = {kind: [store.read(kind, r["key"]) for r in store.ls(kind) if r["status"] == "complete"
                   and r["code"] == "fresh"] for kind in ("train", "retrain", "score")}
    network = {run["result"]["weights_hash"]: _network(run["config"]) for run in runs["train"]}
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs["train"]:
        stage = "decoupled training" if run["config"].get("training") == "decoupled" else "training"
        out[stage, network[run["result"]["weights_hash"]]].append(run["result"]["train_seconds"])
    for run in runs["retrain"]:
        out["retraining on the target", _network(run["config"])].append(run["result"]["train_seconds"])
    for run in runs["score"]:
        stage = "block score" if "block" in run["config"] else "score"
        owner = network.get(run["meta"]["inputs"].get("weights"), "network not in this store")
        out[stage, owner].append(sum(run["result"]["provenance"]["seconds"].values()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="shipped", help="the result store's root (default: shipped)")
    seconds = recorded_seconds(Store(parser.parse_args().store))
    print(f"{'stage':<26} {'network':<28} {'runs':>5} {'CPU-h':>7}")
    for (stage, net), values in sorted(seconds.items()):
        print(f"{stage:<26} {net:<28} {len(values):>5} {sum(values) / 3600:>7.2f}")
    by_stage: dict[str, float] = defaultdict(float)
    for (stage, _net), values in seconds.items():
        by_stage[stage] += sum(values)
    for stage, total in sorted(by_stage.items()):
        print(f"total {stage:<20} {'':<28} {'':>5} {total / 3600:>7.2f}")
    print(f"total recorded {'':<47} {sum(by_stage.values()) / 3600:>7.2f}")


if __name__ == "__main__":
    main()
