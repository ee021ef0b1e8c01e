"""Stop and resume: a run killed with SIGKILL continues from its checkpoint bit for bit."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TinyRun, finished_history, run_cli, tiny_overrides

from fedavg_mnist.ops.campaign_queue import rounds_logged

pytestmark = pytest.mark.slow  # starts the CLI in processes, kills one


def test_killed_run_resumes_to_the_same_history(synthetic_root: Path, tmp_path: Path) -> None:
    settings = ["num_rounds=40", "checkpoint_every=3", "client_fraction=0.25"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_cli(*tiny_overrides(synthetic_root, reference, *settings)).returncode == 0

    command = [
        sys.executable,
        "-m",
        "fedavg_mnist.main",
        *tiny_overrides(synthetic_root, killed, *settings),
    ]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while rounds_logged(killed) < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its Ray workers, mid-run
    process.wait()
    logged = rounds_logged(killed)
    assert 8 <= logged < 41, "the run was not stopped mid-way"
    assert json.loads((killed / "results.json").read_text())["finished"] is False

    resumed = run_cli(*tiny_overrides(synthetic_root, killed, *settings, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    history = finished_history(killed)
    assert [r[0] for r in history] == list(range(41))  # no round lost or repeated
    assert history == finished_history(reference)
    assert rounds_logged(killed) == 41
    assert json.loads((killed / "results.json").read_text())["resumed_after_rounds"]


def test_resume_refuses_other_settings_and_finished_runs(tiny_run: TinyRun, tmp_path: Path):
    run_dir, synthetic_root = tmp_path / "run", tiny_run.data_root
    shutil.copytree(tiny_run.run_dir, run_dir)  # a finished run, moved: it resumes where it is
    for extra, pattern in (
        (["lr=0.05"], "cannot resume"),
        ([], "nothing to resume"),
    ):
        result = run_cli(*tiny_overrides(synthetic_root, run_dir, *extra, "resume=true"))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    fresh = run_cli(*tiny_overrides(synthetic_root, tmp_path / "empty", "resume=true"))
    assert fresh.returncode == 2 and "nothing to resume: no checkpoint.pt" in fresh.stderr
    # a finished run can be continued for more rounds
    longer = run_cli(*tiny_overrides(synthetic_root, run_dir, "num_rounds=4", "resume=true"))
    assert longer.returncode == 0, longer.stderr
    assert [r[0] for r in finished_history(run_dir)] == [0, 1, 2, 3, 4]
