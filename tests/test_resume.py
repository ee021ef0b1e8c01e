"""Stop and resume: a run killed (SIGKILL) or stopped (SIGTERM) continues bit for bit; one
run per run directory."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    TinyRun,
    finished_history,
    run_cli,
    start_cli,
    tiny_overrides,
    write_synthetic_mnist,
)

from fedavg_mnist.ops.campaign_queue import rounds_logged

pytestmark = pytest.mark.slow  # starts the CLI in processes, kills one


ROUNDS = 24  # a kill after round 8 lands mid-run with rounds to spare
SETTINGS = [f"num_rounds={ROUNDS}", "checkpoint_every=3", "client_fraction=0.25"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, run directory) of the run never stopped."""
    base = tmp_path_factory.mktemp("reference")
    root, run_dir = write_synthetic_mnist(base / "data"), base / "run"
    assert run_cli(*tiny_overrides(root, run_dir, *SETTINGS)).returncode == 0
    return root, run_dir


def _start(root: Path, run_dir: Path) -> subprocess.Popen[str]:
    return start_cli(*tiny_overrides(root, run_dir, *SETTINGS))


def _wait_for_rounds(process: subprocess.Popen[str], run_dir: Path, rounds: int) -> None:
    deadline = time.monotonic() + 300
    while rounds_logged(run_dir) < rounds and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _resumes_to_the_reference(root: Path, run_dir: Path, reference_dir: Path) -> None:
    resumed = run_cli(*tiny_overrides(root, run_dir, *SETTINGS, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    history = finished_history(run_dir)
    assert [r[0] for r in history] == list(range(ROUNDS + 1))  # no round lost or repeated
    assert history == finished_history(reference_dir)
    assert rounds_logged(run_dir) == ROUNDS + 1
    assert json.loads((run_dir / "results.json").read_text())["resumed_after_rounds"]


def test_killed_run_resumes_to_the_same_history(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    root, killed = reference[0], tmp_path / "killed"
    process = _start(root, killed)
    _wait_for_rounds(process, killed, 8)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its Ray workers, mid-run
    process.wait()
    assert 8 <= rounds_logged(killed) < ROUNDS + 1, "the run was not stopped mid-way"
    assert json.loads((killed / "results.json").read_text())["finished"] is False
    _resumes_to_the_reference(root, killed, reference[1])  # the kernel dropped its lock


def test_sigterm_is_ctrl_c_keeps_the_newest_round_and_resumes(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """As SLURM, Kubernetes or `timeout` stop a job: one line, exit 143, no stack dump."""
    import torch

    root, stopped = reference[0], tmp_path / "stopped"
    process = _start(root, stopped)
    _wait_for_rounds(process, stopped, 8)
    process.send_signal(signal.SIGTERM)  # the CLI alone, as `timeout` sends it
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == [
        "error: interrupted (SIGTERM): continue with the same overrides and resume=true"
    ]
    logged = rounds_logged(stopped)
    assert 8 <= logged < ROUNDS + 1
    checkpoint = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert checkpoint["server_round"] == logged - 1  # the newest round, not the last third
    with pytest.raises(ProcessLookupError):  # Ray and every worker ended with the run
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)
            time.sleep(0.5)
    _resumes_to_the_reference(root, stopped, reference[1])


def _ray_workers_of(session: int) -> list[int]:
    """PIDs of the Flower client actors (Ray workers) in a process session."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and "ClientAppActor" in command:
            pids.append(int(proc.name))
    return pids


def test_a_ray_worker_killed_mid_run_loses_nothing(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """Killed while it trains, its round fails the run in one line and a resume goes on;
    killed between tasks, Ray starts it again and the run goes on. Either way: the history
    of the run never disturbed."""
    root, crashed = reference[0], tmp_path / "crashed"
    process = _start(root, crashed)
    _wait_for_rounds(process, crashed, 8)
    workers = _ray_workers_of(process.pid)
    assert workers, "no Ray worker found"
    os.kill(workers[0], signal.SIGKILL)  # the OOM killer's way
    _, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr
    if process.returncode == 0:
        assert finished_history(crashed) == finished_history(reference[1])
        return
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "a client failed" in errors[0], stderr
    _resumes_to_the_reference(root, crashed, reference[1])


def test_a_second_run_into_a_run_directory_in_use_is_refused(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two runs, one directory: the second ends at once naming the first; the first's files
    are those of a run alone."""
    root, shared = reference[0], tmp_path / "shared"
    first = _start(root, shared)
    _wait_for_rounds(first, shared, 1)
    hydra_config = (shared / ".hydra" / "config.yaml").read_bytes()
    second = run_cli(*tiny_overrides(root, shared, *SETTINGS, "seed=1"), timeout=60)
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: {shared} is in use by PID {first.pid} on "), line
    assert (shared / ".hydra" / "config.yaml").read_bytes() == hydra_config  # not rewritten
    assert first.wait(timeout=300) == 0
    assert finished_history(shared) == finished_history(reference[1])
    assert rounds_logged(shared) == ROUNDS + 1  # one run's rounds, each once
    # the directory is free once its run has ended: the next run is told of the results
    after = run_cli(*tiny_overrides(root, shared, *SETTINGS))
    assert after.returncode == 2 and "results.json already exists" in after.stderr


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
