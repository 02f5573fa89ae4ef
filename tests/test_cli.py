"""`critneuron train | score | prune` end to end on an MNIST subset, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from critneuron import cli
from critneuron.errors import CheckpointError, SolveError
from critneuron.experiments.store import Store
from critneuron.mip import scores as scores_module
from critneuron.pruning.masks import Masks
from critneuron.nets.train import load_checkpoint


@pytest.fixture(scope="module")
def fc3_checkpoint(shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "fc3"
    argv = ["train", "--model", "fc3", "--dataset", "mnist", "--data-root", str(shared_data_root), "--subset", "2000",
            "--test-subset", "1000", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    return out / "checkpoint.pt"


def test_score_then_prune(fc3_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scores_file, prune_file, pruned = tmp_path / "scores.json", tmp_path / "prune.json", tmp_path / "pruned.pt"
    assert cli.main(["score", "--checkpoint", str(fc3_checkpoint), "--mode", "exact", "--lambda", "5",
                     "--batch-size", "10", "--out", str(scores_file)]) == 0
    assert "self-check" in capsys.readouterr().out
    result = json.loads(scores_file.read_text())
    assert {len(v) for v in result["layers"].values()} == {300, 100} and set(result["layers"]) == {"fc1", "fc2"}
    assert len(result["inputs"]["batch_indices"]) == 10 and result["provenance"]["labels"] == list(range(10))
    solver = result["provenance"]["solver"]
    assert solver["status"] == "optimal" and solver["rounds"] >= 1 and "HiGHS" in solver["solver_version"]
    assert result["provenance"]["config"]["mode"] == "exact" and result["objective"] == solver["objective"]
    assert result["provenance"]["selfcheck_error"] <= 1e-4
    assert set(result["provenance"]["seconds"]) == {"bounds", "build", "solve"}

    assert cli.main(["prune", "--checkpoint", str(fc3_checkpoint), "--scores", str(scores_file), "--threshold", "mean",
                     "--out", str(prune_file), "--save-model", str(pruned)]) == 0
    row = json.loads(prune_file.read_text())
    masks = Masks.from_dict(row["masks"])
    expected = {name: sum(s < sum(v) / len(v) for s in v) for name, v in result["layers"].items()}
    assert masks.n_pruned() == expected
    assert row["table_row"]["tau"] == "mean" and row["table_row"]["selfcheck_error"] <= 1e-4
    model, _meta = load_checkpoint(pruned)
    dead = masks.pruned("fc1")
    assert dead and float(model.fc1.weight.detach()[dead].abs().sum()) == 0.0


def test_prune_refuses_scores_of_other_weights(fc3_checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    scores_file = tmp_path / "scores.json"
    scores_file.write_text(json.dumps({"method": "mip", "layers": {"fc1": [1.0] * 300, "fc2": [1.0] * 100},
                                       "provenance": {}, "inputs": {"weights": "0123456789abcdef"}}))
    assert cli.main(["prune", "--checkpoint", str(fc3_checkpoint), "--scores", str(scores_file)]) == 2
    assert "score this checkpoint first" in capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"objective": 1.0, "status": "optimal"}', "[1, 2]", "not json"])
def test_prune_names_a_file_that_is_not_a_scores_file(fc3_checkpoint: Path, tmp_path: Path, content: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    scores_file = tmp_path / "other.json"
    scores_file.write_text(content)
    assert cli.main(["prune", "--checkpoint", str(fc3_checkpoint), "--scores", str(scores_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {scores_file} is not a scores file written by `critneuron score`") and err.count("\n") == 1


def test_a_checkpoint_with_non_finite_weights_is_named(fc3_checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    blob = torch.load(fc3_checkpoint, weights_only=True)
    blob["state_dict"]["fc2.weight"][3, 5] = float("nan")
    torch.save(blob, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=r"diverged.pt has non-finite weights \(NaN or inf\) in fc2.weight: "):
        load_checkpoint(tmp_path / "diverged.pt")
    assert cli.main(["score", "--checkpoint", str(tmp_path / "diverged.pt")]) == 2
    assert "non-finite weights" in capsys.readouterr().err


def test_score_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["score", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_m_critneuron_is_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "critneuron", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: critneuron") and all(c in out.stdout for c in ("train", "score", "results"))


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 100, b'{"not": "torch"}', None])
def test_a_corrupt_or_foreign_checkpoint_is_one_named_line_and_status_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "garbage.pt"
    if content is None:  # a real torch file, but not a critneuron checkpoint
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "critneuron", "score", "--checkpoint", "garbage.pt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: garbage.pt is not a critneuron checkpoint") and out.stderr.count("\n") == 1


def test_a_damaged_checkpoint_is_a_checkpoint_error(fc3_checkpoint: Path, tmp_path: Path) -> None:
    blob = torch.load(fc3_checkpoint, weights_only=True)
    del blob["state_dict"]["fc1.weight"]
    torch.save(blob, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=r"damaged.pt is a damaged critneuron checkpoint: RuntimeError"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_decoupled_train_and_score_by_blocks(shared_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --training decoupled` keeps the heads in the checkpoint; `score --decoupled --blocks`
    scores only those blocks, stores each as it finishes and reuses it on a rerun; a block without
    a solution is written and printed as failed (sizes, time, memory), and the command exits 1."""
    out, results, scores_file = tmp_path / "lenet", tmp_path / "results", tmp_path / "scores.json"
    assert cli.main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-root", str(shared_data_root),
                     "--subset", "2000", "--test-subset", "500", "--epochs", "1", "--training", "decoupled",
                     "--results", str(results), "--out", str(out), "--no-progress"]) == 0
    _model, meta = load_checkpoint(out / "checkpoint.pt")
    assert meta["heads"] and meta["metrics"]["training"] == "decoupled"
    argv = ["score", "--checkpoint", str(out / "checkpoint.pt"), "--decoupled", "--blocks", "2", "--any-images",
            "--results", str(results), "--out", str(scores_file), "--time-limit", "60"]
    assert cli.main(argv) == 0
    first = json.loads(scores_file.read_text())
    assert [b["block"] for b in first["provenance"]["blocks"]] == ["tail"]
    assert set(first["layers"]) == {"conv2", "fc1", "fc2"} and first["all_optimal"]
    assert first["provenance"]["blocks"][0]["peak_rss_gb"] > 0
    assert "1 blocks, all optimal" in capsys.readouterr().out
    assert cli.main(argv) == 0 and len(Store(results).ls("score")) == 1  # the stored block is reused
    assert json.loads(scores_file.read_text())["layers"] == first["layers"]

    def no_solution(form, cfg):  # the first block's solve ends without a point (as a time-out would)
        raise SolveError("HiGHS ended with status maxTimeLimit and no feasible solution",
                         {"solver_status": "maxTimeLimit", "rounds": 0, "solve_s": 1.0, **form.sizes()})

    monkeypatch.setattr(scores_module, "solve", no_solution)
    argv[argv.index("2")] = "1,2"
    assert cli.main(argv) == 1
    out = json.loads(scores_file.read_text())
    failed, tail = out["provenance"]["blocks"]
    assert failed["status"] == "failed" and failed["solver_status"] == "maxTimeLimit" and not out["all_optimal"]
    assert failed["variables"] > 0 and failed["nonzeros"] > 0 and failed["unstable_units"] >= 0
    assert failed["wall_s"] > 0 and failed["peak_rss_gb"] > 0 and "no feasible solution" in failed["error"]
    assert tail == first["provenance"]["blocks"][0] and out["failed_blocks"] == [failed["block"]]
    assert out["layers"] == first["layers"]  # the failed block has no scores
    assert failed["final_point"] == "none" and out["unused_blocks"] == [failed["block"]] and out["block_bounds"] == "network"
    printed = capsys.readouterr().out
    assert f"{failed['block']:8} " in printed and "2 blocks, NOT all optimal, 1 failed" in printed
    assert f"not used for pruning: {failed['block']}" in printed and "self-check flagged (!) above 0.0001" in printed


def test_decoupled_scoring_needs_heads(fc3_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["score", "--checkpoint", str(fc3_checkpoint), "--decoupled"]) == 2
    assert "no auxiliary heads" in capsys.readouterr().err
