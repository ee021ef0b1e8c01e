"""`flwr run .` as a new user runs it: the same run as the Hydra CLI, the same guarantees."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PROJECT_ROOT,
    TINY_SETTINGS,
    TinyRun,
    finished_history,
    start_cli,
    tiny_overrides,
    write_synthetic_mnist,
)
from flower import FlowerHome

from fedavg_mnist.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedavg_mnist.ops.campaign_queue import rounds_logged

pytestmark = pytest.mark.slow  # starts Flower's local SuperLink and `flwr` commands

TINY = TINY_SETTINGS  # the tiny run of `tiny_overrides`, in `--run-config`'s keys
SIMULATION = "num-supernodes=4 client-resources-num-cpus=1"
ONE_LINE_ERROR = re.compile(r"^ERROR\s*:\s+error: ")  # Flower's log line holding ours
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _tracked_changes() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerHome]:
    home = FlowerHome(tmp_path_factory.mktemp("flower"))
    try:
        yield home
    finally:
        home.stop()


def test_flwr_run_gives_the_hydra_clis_run_and_fails_bad_input_in_one_line(
    flower: FlowerHome, tiny_run: TinyRun, tmp_path: Path
) -> None:
    """Same settings, both launchers: the same history, results where the log says; results in
    the way, the wrong federation: a failed run, one line each.

    (Results in the way fail the checks every bad setting fails, whose messages `test_cli.py`
    covers one by one; the check of the clients' Ray resources, the other half of the
    federation, is `test_server.py`'s.) Each run is waited for before the next is submitted:
    Flower starts every submitted run at once, each with a Ray of its own, which two cores
    cannot carry.
    """
    tracked_before = _tracked_changes()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text('{"keep": true}')
    failing: list[tuple[dict[str, object], str, str]] = [
        ({"output_dir": str(taken)}, SIMULATION, "results.json already exists"),
        ({}, "num-supernodes=2 client-resources-num-cpus=1", "of 2, but num_clients (K) is 4"),
    ]
    data_root = tiny_run.data_root
    run_id = flower.submit({**TINY, "dataset.root": str(data_root)}, SIMULATION)
    statuses = flower.wait([run_id])
    for settings, federation, _ in failing:
        failed_id = flower.submit({**TINY, "dataset.root": str(data_root), **settings}, federation)
        statuses |= flower.wait([failed_id])
    failed_ids = list(statuses)[1:]

    log = flower.log(run_id, until="best accuracy")
    assert statuses[run_id] == "finished:completed", log
    run_dir = flower.home / "fedavg-mnist" / "outputs" / str(run_id)  # the documented default
    assert f"results: {run_dir}\n" in log  # printed at the start
    assert f"results: {run_dir / 'results.json'}" in log  # and in the summary at the end
    assert finished_history(run_dir) == finished_history(tiny_run.run_dir)
    for round_number in (0, 1, 2):
        assert f"round {round_number:4d}  accuracy" in log
    assert "Traceback" not in log
    assert "[ROUND" not in log  # Flower's round lines, one ahead of ours, are left out

    for failed_id, (_, _, message) in zip(failed_ids, failing, strict=True):
        log = flower.log(failed_id, until="error: ")
        assert statuses[failed_id] == "finished:failed", log
        lines = ANSI_COLOUR.sub("", log).splitlines()
        errors = [line for line in lines if ONE_LINE_ERROR.search(line)]
        assert len(errors) == 1 and message in errors[0], log
        assert "Traceback" not in log, log
    assert (taken / "results.json").read_text() == '{"keep": true}'
    assert "--federation-config" in errors[0]  # the fix is named
    assert _tracked_changes() == tracked_before  # `flwr` rewrote no file of the repo


def test_the_app_bundle_holds_the_apps_modules_only(tmp_path: Path) -> None:
    """`flwr build`: what Flower ships to a SuperLink for each run, and that it stands alone."""
    home = FlowerHome(tmp_path)
    # Flower takes the app's name from its folder's, which a clone may have spelled otherwise
    app = tmp_path / "fedavg-mnist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "fedavg_mnist", app / "fedavg_mnist", ignore=ignore)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", app)
    result = home.flwr("build", "--app", str(app), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = sorted(zipfile.ZipFile(fab).namelist())
    modules = [name for name in names if name.endswith(".py")]
    assert "fedavg_mnist/server_app.py" in modules and "fedavg_mnist/client_app.py" in modules
    assert [name for name in names if not name.endswith(".py")] == [
        ".info/CONTENT",
        "pyproject.toml",
    ]
    assert not [m for m in modules if m.startswith(("fedavg_mnist/analysis", "fedavg_mnist/ops"))]
    assert "fedavg_mnist/main.py" not in modules  # the Hydra CLI is a launcher, not the app
    # the bundle's modules import nothing outside it
    bundle = tmp_path / "bundle"
    zipfile.ZipFile(fab).extractall(bundle)
    code = (
        "import sys; sys.path.insert(0, '.'); import fedavg_mnist.server_app, "
        "fedavg_mnist.client_app; print(sorted(m for m in sys.modules if m.startswith('fedavg_')"
        " and not sys.modules[m].__file__.startswith(sys.path[0] or '.')))"
    )
    imported = subprocess.run(
        [sys.executable, "-I", "-c", code.replace("sys.path[0] or '.'", repr(str(bundle)))],
        cwd=bundle,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


def test_flwr_stop_keeps_the_newest_round_and_resume_gives_the_run_never_stopped(
    flower: FlowerHome, tmp_path: Path
) -> None:
    """`flwr stop` mid-run: the newest evaluated round is checkpointed (no regular checkpoint
    falls due after round 0), and `resume=true` under `flwr run` gives the history of the
    run never stopped, which the Hydra CLI makes here, beside both."""
    # Flower's simulation process hears of a stop on its next heartbeat to the SuperLink, up to
    # `HEARTBEAT_DEFAULT_INTERVAL` (30 s, less the call's timeout) later: the run must outlast
    # that by rounds to spare on the fastest machine (one client of 5,000 examples, E=5).
    root = write_synthetic_mnist(tmp_path / "data", num_train=20_000)
    settings = {
        "num_rounds": 30,
        "local_epochs": 5,
        "checkpoint_every": 1000,
        "client_fraction": 0.25,
    }
    cli_settings = [f"{key}={value}" for key, value in settings.items()]
    reference = tmp_path / "reference"
    never_stopped = start_cli(*tiny_overrides(root, reference, *cli_settings))
    try:
        stopped = tmp_path / "stopped"
        run_config = {**TINY, **settings, "dataset.root": str(root), "output_dir": str(stopped)}
        run_id = flower.submit(run_config, SIMULATION)
        deadline = time.monotonic() + 240
        while rounds_logged(stopped) < 2:
            assert time.monotonic() < deadline, flower.log(run_id, until="error")
            time.sleep(0.05)
        assert flower.flwr("stop", str(run_id)).returncode == 0
        assert flower.wait([run_id])[run_id] == "finished:stopped"
        deadline = time.monotonic() + 90  # the heartbeat, then Flower's exit handlers
        while _checkpointed_round(stopped) < 1:
            assert time.monotonic() < deadline, "the stopped run wrote no checkpoint past round 0"
            time.sleep(0.2)
        time.sleep(3.0)  # Flower's process may finish the round in flight before it exits
        logged = rounds_logged(stopped)
        assert 2 <= logged < 31, "the run was not stopped mid-way"
        assert _checkpointed_round(stopped) == logged - 1  # the newest round, not round 0
        assert json.loads((stopped / "results.json").read_text())["finished"] is False

        resumed_id = flower.submit({**run_config, "resume": True}, SIMULATION)
        assert flower.wait([resumed_id])[resumed_id] == "finished:completed"
        _, errors = never_stopped.communicate(timeout=600)
        assert never_stopped.returncode == 0, errors
    finally:
        if never_stopped.poll() is None:  # a failed assertion: the run and its Ray workers
            os.killpg(never_stopped.pid, signal.SIGKILL)
        never_stopped.wait()
    history = finished_history(stopped)
    assert [r[0] for r in history] == list(range(31))
    assert history == finished_history(reference)


def _checkpointed_round(run_dir: Path) -> int:
    """The round of the run directory's checkpoint; -1 before the first one."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        return -1
    return load_checkpoint(run_dir).server_round
