"""Checkpoints: resuming reaches exactly the uninterrupted run; writes are atomic; loads are weights-only."""

import pickle

import pytest
import torch

from helpers import compose_config, read_csv, tiny
from stgnn_launch.errors import UserError
from stgnn_launch.train import checkpoint
from stgnn_launch.train.run import run_training


def run(run_dir, *overrides):
    cfg = compose_config("trainer.patience=50", *overrides)
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


@pytest.mark.parametrize("model", ["tgcn", "dcrnn"])
def test_two_epochs_then_resume_to_four_equals_four_straight(tmp_path, model):
    base = [*tiny(model), "trainer.lr_milestones=[3]"]
    straight = run(tmp_path / "straight", *base, "trainer.max_epochs=4")
    first = run(tmp_path / "resumed", *base, "trainer.max_epochs=2")
    first_ckpt = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    metrics_csv = tmp_path / "resumed" / "metrics.csv"
    with metrics_csv.open("a") as handle:  # killed after logging epoch 3, before its checkpoint
        handle.write("3,9.0,9.0\n")
    resumed = run(tmp_path / "resumed", *base, "trainer.max_epochs=4", "trainer.resume=true")
    rows = read_csv(metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_mae"]) for r in rows] == [e["val_mae"] for e in resumed["epochs"]]
    # the run's wall time spans both attempts: the first up to its last checkpoint, then the whole second
    assert straight["attempts"] == first["attempts"] == 1 and resumed["attempts"] == 2
    assert 0 < first_ckpt["run_wall_time_s"] <= first["wall_time_s"] == first["attempt_wall_time_s"]
    assert resumed["wall_time_s"] == first_ckpt["run_wall_time_s"] + resumed["attempt_wall_time_s"]
    strip = lambda epochs: [{k: v for k, v in e.items() if not (k.endswith("_s") or k == "samples_per_s")} for e in epochs]
    assert strip(resumed["epochs"]) == strip(straight["epochs"])
    assert resumed["test"] == straight["test"]
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_a_checkpoint_without_the_run_wall_time_resumes_with_its_epochs_times(tmp_path):
    """Checkpoints written before run_wall_time_s existed: earlier attempts count their epochs' own times."""
    base = [*tiny("tgcn")]
    run(tmp_path / "old", *base, "trainer.max_epochs=2")
    path = tmp_path / "old" / "checkpoints" / "last.pt"
    state = checkpoint.load(path)
    del state["run_wall_time_s"], state["attempt"]
    checkpoint.save_atomic(state, path)
    resumed = run(tmp_path / "old", *base, "trainer.max_epochs=3", "trainer.resume=true")
    earlier = sum(e["epoch_time_s"] + e["eval_s"] for e in resumed["epochs"][:2])
    assert resumed["attempts"] == 2 and len(resumed["epochs"]) == 3
    assert resumed["wall_time_s"] == pytest.approx(earlier + resumed["attempt_wall_time_s"])
    again = run(tmp_path / "old", *base, "trainer.max_epochs=1")  # a fresh run in the same directory
    assert again["attempts"] == 1 and [r["epoch"] for r in read_csv(tmp_path / "old" / "metrics.csv")] == ["1"]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # save_atomic hands torch.save its own open file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    assert checkpoint.load(path)["epoch"] == 1  # the previous checkpoint survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_weights_only(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path, pickle_module=pickle)
    with pytest.raises(UserError, match="could not read it") as refused:
        checkpoint.load(path)
    assert "this must never run" not in capsys.readouterr().out
    # one line, and no advice to load it unsafely (torch's own text suggests weights_only=False)
    assert "\n" not in str(refused.value) and "weights_only=False" not in str(refused.value)
    with pytest.raises(UserError, match="expected a file"):
        checkpoint.load(tmp_path / "missing.pt")
