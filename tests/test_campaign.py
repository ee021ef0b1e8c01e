"""The queue of long runs: each cell run once, a stopped one resumed, a failure stops it."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TinyRun

from fedavg_mnist.machine import machine_description
from fedavg_mnist.ops.campaign_queue import rounds_logged

pytestmark = pytest.mark.slow  # starts the queue and its runs in processes


def _queue(tmp_path: Path, root: Path, cells: dict[str, list[str]]) -> Path:
    common = [
        "model=mlp",
        "num_clients=4",
        "client_fraction=0.5",
        "local_epochs=1",
        "batch_size=10",
        f"dataset.root={root}",
        "dataset.download=false",
        "dataset.verify_checksums=false",
        "checkpoint_every=1",
    ]
    spec = {
        "runs_dir": str(tmp_path / "runs"),
        "common": common,
        "cells": [{"name": name, "overrides": overrides} for name, overrides in cells.items()],
    }
    path = tmp_path / "queue.yaml"
    path.write_text(json.dumps(spec))  # YAML reads JSON
    return path


def _campaign(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedavg_mnist.ops.campaign", *args]


def test_a_stopped_queue_resumes_its_cell_and_skips_the_done_one(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    slow = ["num_rounds=10", "local_epochs=5", "batch_size=1"]  # a second or so a round
    cells = {"short": ["num_rounds=2"], "long": slow, "other": ["num_rounds=3"]}
    queue = _queue(tmp_path, tiny_run.data_root, cells)
    runs = tmp_path / "runs"
    # `short` was finished before the queue ran (the tiny run is its settings): it is skipped
    shutil.copytree(tiny_run.run_dir, runs / "short", ignore=shutil.ignore_patterns("*.pt"))
    running = subprocess.Popen(_campaign("run", str(queue)), cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 300
    while rounds_logged(runs / "long") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop = subprocess.run(_campaign("stop", str(queue)), cwd=PROJECT_ROOT, timeout=120)
    assert stop.returncode == 0 and running.wait(60) == 0
    status = subprocess.run(
        _campaign("status", str(queue)), cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout
    assert "| short | done | 2 |" in status and "| long | started |" in status
    assert "| other | left | 0 |" in status
    assert not (runs / "campaign.lock").exists()

    # Again, the cells chosen by pattern, in the patterns' order: `other`, then `long` resumes.
    again = subprocess.run(
        _campaign("run", str(queue), "--cells", "o*", "long", "short"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stdout
    assert "short:" not in again.stdout  # done cells are skipped
    assert again.stdout.index("other:") < again.stdout.index("long:")  # the patterns' order
    document = json.loads((runs / "long" / "results.json").read_text())
    assert document["finished"] and document["resumed_after_rounds"]
    assert document["machines"] == [machine_description()]  # one machine for both sessions
    assert [r["round"] for r in document["history"]] == list(range(11))
    assert not list(runs.glob("*/checkpoint.pt"))  # done: the results are kept, not the model
    status_file = (runs / "STATUS.md").read_text()
    assert "| long | done | 10 |" in status_file and "| other | done | 3 |" in status_file


def test_a_time_limit_stops_the_queue_with_its_cell_resumable(
    synthetic_root: Path, tmp_path: Path
) -> None:
    slow = ["num_rounds=1000", "local_epochs=5", "batch_size=1"]
    queue = _queue(tmp_path, synthetic_root, {"endless": slow})
    started = time.monotonic()
    result = subprocess.run(
        _campaign("run", str(queue), "--time-limit", "20"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    assert "time limit of 20 s reached" in result.stdout
    assert time.monotonic() - started < 60  # the limit, the cell's stop, the status
    assert "| endless | done |" not in (tmp_path / "runs" / "STATUS.md").read_text()
    assert not (tmp_path / "runs" / "campaign.lock").exists()


def test_cells_at_once_each_log_on_their_own_and_keep_going_after_failures(
    synthetic_root: Path, tmp_path: Path
) -> None:
    # Two failing cells at once (they fail before any Ray starts: two Rays starting at
    # once are too much for 2 cores), then a good one takes a freed place.
    cells = {"bad1": ["lr=-1"], "bad2": ["lr=-2"], "good": ["num_rounds=1"]}
    queue = _queue(tmp_path, synthetic_root, cells)
    result = subprocess.run(
        _campaign("run", str(queue), "--jobs", "2", "--keep-going"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stdout
    for name, lr in (("bad1", "-1"), ("bad2", "-2")):
        assert f"{name}: exit status 2; the queue goes on (--keep-going)" in result.stdout
        log = (tmp_path / "runs" / name / "campaign.log").read_text()
        assert "lr must be" in log and lr in log  # its own output, in its own log
    assert result.stdout.index("bad2:") < result.stdout.index("good:")
    assert "| good | done | 1 |" in (tmp_path / "runs" / "STATUS.md").read_text()


def test_the_status_of_a_queue_not_started_writes_nothing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    queue = _queue(tmp_path, synthetic_root, {"first": ["num_rounds=2"]})
    status = subprocess.run(
        _campaign("status", str(queue)), cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert "| first | left | 0 |" in status.stdout
    assert not (tmp_path / "runs").exists()


def test_every_queue_file_of_the_project_reads(tmp_path: Path) -> None:
    """The shipped queues (the CNN cells, the seeds): every cell's overrides compose."""
    from fedavg_mnist.ops.campaign_queue import load_queue
    from fedavg_mnist.overrides import compose_run_config

    for path in sorted((PROJECT_ROOT / "conf" / "campaign").glob("*.yaml")):
        queue = load_queue(path)
        assert queue.cells, path
        for cell in queue.cells[:3] + queue.cells[-3:]:
            compose_run_config([*queue.common, *cell.overrides], str(tmp_path))


def test_a_pattern_that_matches_no_cell_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    queue = _queue(tmp_path, synthetic_root, {"only": ["num_rounds=1"]})
    result = subprocess.run(
        _campaign("run", str(queue), "--cells", "nothing*"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no cell of the queue matches 'nothing*'"


def test_a_failing_cell_stops_the_queue(synthetic_root: Path, tmp_path: Path) -> None:
    queue = _queue(tmp_path, synthetic_root, {"bad": ["lr=-1"], "next": ["num_rounds=1"]})
    result = subprocess.run(
        _campaign("run", str(queue)), cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "bad: exit status 2; the queue stops here" in result.stdout
    assert "| next | left | 0 |" in (tmp_path / "runs" / "STATUS.md").read_text()


def test_a_simulation_failing_before_any_round_is_started_once_more(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """(As Ray timing out at start-up on a busy machine does.) Here no actor fits the CPUs."""
    cells = {"crowded": ["client_resources.num_cpus=64"], "next": ["num_rounds=1"]}
    queue = _queue(tmp_path, synthetic_root, cells)
    result = subprocess.run(
        _campaign("run", str(queue)), cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout
    assert result.stdout.count("] crowded: ") == 2  # started twice, not more
    assert "crowded: exit status 1 before any round; started once more" in result.stdout
    assert "crowded: exit status 1; the queue stops here" in result.stdout
    assert "| next | left | 0 |" in (tmp_path / "runs" / "STATUS.md").read_text()
