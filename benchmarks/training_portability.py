"""Whether this CPU reproduces a result store's trainings bit for bit (issue 24: the shipped store
keeps no checkpoints, so a stage that needs one trains it again; on a CPU whose float kernels sum in
another order the weights differ and every stored result on them is orphaned).

For each stored training named by `--keys` (default: FC-3 and LeNet-5 on MNIST, seed 0, of the
shipped store), trains its first epoch again here, in a fresh process per numerics setting:

- `default`: torch's own choice of kernels for this CPU (how every stored run was trained);
- `portable`: kernels that do not depend on the CPU's model: MKL in its conditional numerical
  reproducibility mode `MKL_CBWR=COMPATIBLE`, torch's AVX2 kernels (`ATEN_CPU_CAPABILITY=avx2`)
  and oneDNN off (convolutions through torch's own im2col and MKL).

and prints epoch 1's training accuracy and validation loss beside the stored record's, with the
epoch's wall time. "same" means bit-identical metrics (the weights then match too).

Usage:
    .venv/bin/python benchmarks/training_portability.py --store shipped
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"default": {}, "portable": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2"}}
KEYS = ("30bf10b8a04ddc13", "8fe24ce2907ad9b2")  # fc3 / lenet5, mnist, seed 0, the paper's schedule


def _first_epoch(record: Path, portable: bool) -> dict:
    """Train the record's config for one epoch here; epoch 1's metrics and the wall time."""
    import torch

    from critneuron.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from critneuron.experiments.runs import _train

    if portable:
        torch.backends.mkldnn.enabled = False
    cfg = json.loads((record / "config.json").read_text())
    run = RunConfig(data=DataConfig(**{**cfg["data"], "root": None}), model=ModelConfig(**cfg["model"]),
                    train=TrainConfig(**{**cfg["train"], "epochs": 1}))
    start = time.perf_counter()
    out = _train(run, progress=False)
    return {**out.result["history"][0], "seconds": time.perf_counter() - start,
            "capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("shipped"))
    parser.add_argument("--keys", nargs="+", default=list(KEYS), help="training runs of the store")
    parser.add_argument("--child", nargs=2, metavar=("RECORD", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_first_epoch(Path(args.child[0]), args.child[1] == "portable")))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    print(f"CPU: {cpu}")
    print(f"{'run':<34} {'setting':<9} {'train acc':>10} {'val loss':>20} {'stored val loss':>20} {'':>4} {'s':>6}")
    for key in args.keys:
        record = args.store / "train" / key
        stored = json.loads((record / "result.json").read_text())["history"][0]
        cfg = json.loads((record / "config.json").read_text())
        name = f"{cfg['model']['name']} {cfg['data']['dataset']} seed {cfg['train']['seed']} ({key[:8]})"
        for setting, env in SETTINGS.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(record), setting], check=True,
                                 capture_output=True, text=True, env={**os.environ, **env, "OMP_NUM_THREADS": "1"})
            got = json.loads(out.stdout.strip().splitlines()[-1])
            same = "same" if (got["train_accuracy"], got["val_loss"]) == (stored["train_accuracy"],
                                                                           stored["val_loss"]) else "diff"
            print(f"{name:<34} {setting:<9} {got['train_accuracy']:>10.6f} {got['val_loss']:>20.17f} "
                  f"{stored['val_loss']:>20.17f} {same:>4} {got['seconds']:>6.1f}")


if __name__ == "__main__":
    main()
