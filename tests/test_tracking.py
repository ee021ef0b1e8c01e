"""Trackers: TensorBoard's and W&B's logs read back with their own formats, equal to the results;
a resumed run continues its tracker run; bad tracker settings end in one line, nothing run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb_log
from conftest import (
    PROJECT_ROOT,
    ParallelSweep,
    finished_history,
    run_cli,
    start_cli,
    tiny_overrides,
)

from fedavg_mnist.errors import UserError
from fedavg_mnist.ops.campaign_queue import rounds_logged
from fedavg_mnist.settings import parse
from fedavg_mnist.tracking import check_tracking, hyperparameters, round_scalars

SETTINGS = ["num_rounds=12", "checkpoint_every=5", "client_fraction=0.25"]


def _tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar, as TensorBoard shows it (its own event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def _as_float32(value: float) -> float:
    import numpy as np

    return float(np.float32(value))


@pytest.mark.slow
def test_tensorboard_logs_each_round_once_across_a_kill_and_resume(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(synthetic_root, run_dir, *SETTINGS, "tracking=tensorboard")
    process = start_cli(*overrides, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while rounds_logged(run_dir) < 8 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # after round 7, its checkpoint at round 5
    process.wait()
    assert 8 <= rounds_logged(run_dir) < 13, "the run was not stopped mid-way"

    resumed = run_cli(*overrides, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    history = finished_history(run_dir)
    logged = _tensorboard_scalars(run_dir / "tensorboard", "test/accuracy")
    # The rounds the killed run logged after its checkpoint were redone: one point each.
    assert [step for step, _ in logged] == list(range(13))
    assert [value for _, value in logged] == [_as_float32(r[1]) for r in history]
    losses = _tensorboard_scalars(run_dir / "tensorboard", "test/loss")
    assert [value for _, value in losses] == [_as_float32(r[2]) for r in history]
    assert [step for step, _ in _tensorboard_scalars(run_dir / "tensorboard", "round/seconds")]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_wandb_offline_sweep_groups_its_points_and_a_resume_continues_the_run(
    parallel_sweep: ParallelSweep, tmp_path: Path
) -> None:
    result, sweep = parallel_sweep.result, parallel_sweep.sweep_dir
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("upload it with: wandb sync ") == 2
    group = "/".join(sweep.parts[-2:])
    run_ids = set()
    for point in sorted(sweep.glob("*/results.json")):
        document = json.loads(point.read_text())
        (run_folder,) = (point.parent / "wandb").glob("offline-run-*")
        record = wandb_log.run_record(run_folder)
        assert (record.run_id, record.run_group) == (document["wandb_run_id"], group)
        logged = wandb_log.history(run_folder)
        assert [(row["round"], row["test/accuracy"], row["test/loss"]) for row in logged] == [
            (r["round"], r["accuracy"], r["loss"]) for r in document["history"]
        ]
        run_ids.add(record.run_id)
    assert len(run_ids) == 2  # one W&B run per experiment run

    point = tmp_path / "0"  # the shared sweep is read-only: its point resumes in a copy
    shutil.copytree(sweep / "0", point)
    resumed = run_cli(
        *tiny_overrides(
            parallel_sweep.data_root, point, "seed=0", "tracking=wandb", "wandb_mode=offline"
        ),
        "num_rounds=3",
        "resume=true",
    )
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads((point / "results.json").read_text())
    folders = sorted((point / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # W&B writes a resumed offline run to a new folder ...
    record = wandb_log.run_record(folders[-1])
    # ... of the same run, in its sweep's group, which `wandb sync` merges.
    assert (record.run_id, record.run_group) == (document["wandb_run_id"], group)
    assert [row["round"] for row in wandb_log.history(folders[-1])] == [3]
    assert wandb_log.history(folders[-1])[0]["test/accuracy"] == document["history"][3]["accuracy"]


def test_round_scalars_average_the_clients_losses() -> None:
    record = {
        "round": 4,
        "accuracy": 0.5,
        "loss": 1.25,
        "seconds": 2.0,
        "clients": [
            {"train_loss_first_epoch": 1.0, "train_loss_last_epoch": 0.5},
            {"train_loss_first_epoch": 3.0, "train_loss_last_epoch": 1.5},
        ],
    }
    assert round_scalars(record) == {
        "test/accuracy": 0.5,
        "test/loss": 1.25,
        "round/seconds": 2.0,
        "train/client_loss_first_epoch": 2.0,
        "train/client_loss_last_epoch": 1.0,
    }
    assert "train/client_loss_first_epoch" not in round_scalars({**record, "clients": []})


def test_hyperparameters_are_flat_and_name_b_inf() -> None:
    config = parse({"batch_size": "inf", "model.name": "cnn"})
    settings = hyperparameters(config)
    assert settings["batch_size"] == "inf"
    assert settings["model.name"] == "cnn"
    assert all(isinstance(v, bool | int | float | str) for v in settings.values())


def test_unknown_tracker_is_refused_in_one_line() -> None:
    known = "one of none, tensorboard, wandb"
    with pytest.raises(UserError, match=rf"tracking must be {known}, got mlflow"):
        parse({"tracking": "mlflow"})
    with pytest.raises(UserError, match=r"wandb_mode must be one of online, offline, got disabled"):
        parse({"wandb_mode": "disabled"})


def test_a_tracker_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` finds uninstalled
    with pytest.raises(UserError) as raised:
        check_tracking(parse({"tracking": "wandb"}))
    expected = 'tracking=wandb needs the wandb package: pip install -e ".[tracking]"'
    assert str(raised.value) == expected


def test_a_tracking_folder_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = parse({"tracking": "tensorboard", "tracking_dir": str(blocker / "logs")})
    with pytest.raises(UserError, match=r"tracking folder .* cannot be made: .*file is a file"):
        check_tracking(config)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        config = parse({"tracking": "tensorboard", "tracking_dir": str(locked / "logs")})
        with pytest.raises(UserError, match="is not writable"):
            check_tracking(config)


@pytest.mark.slow
def test_cli_without_the_tracker_ends_in_one_line_and_writes_nothing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    hide_wandb = (
        "import runpy, sys; sys.modules['wandb'] = None; "
        "runpy.run_module('fedavg_mnist.main', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_wandb, *tiny_overrides(synthetic_root, run_dir),
         "tracking=wandb"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        'error: tracking=wandb needs the wandb package: pip install -e ".[tracking]"'
    ]
    assert not run_dir.exists()
