"""Defects found by reading the code before the redesign, each kept mended by a test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from fedavg_mnist import main, mnist
from fedavg_mnist.errors import ClientFailure, UserError
from fedavg_mnist.ops import processes
from fedavg_mnist.records import RESULTS_FILE
from fedavg_mnist.run_dir import check_resumable
from fedavg_mnist.settings import parse
from fedavg_mnist.storage import write_atomic, write_text_atomic

# Every module of the package; the import test below imports each in a fresh interpreter.
MODULES = sorted(
    ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    for path in (PROJECT_ROOT / "fedavg_mnist").rglob("*.py")
    if path.name != "__init__.py"
)


def _recorded_run(tmp_path: Path, config: dict) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    document = {"config": config, "finished": False, "completed_rounds": 3}
    (run_dir / RESULTS_FILE).write_text(json.dumps(document))
    return run_dir


def test_resume_ignores_settings_that_do_not_change_results(tmp_path: Path) -> None:
    """A preset's `lr_table` gained a rate for another cell: its started cells still resume."""
    run_dir = tmp_path / "run"
    config = parse({"output_dir": str(run_dir), "num_rounds": 10, "resume": True})
    recorded = config.record() | {"lr_table": {"iid_E5_B10": 0.1}, "num_rounds": 3}
    _recorded_run(tmp_path, recorded | {"device": "cuda", "verbose": True})
    check_resumable(config)  # another lr_table, round cap, device: the same run
    with pytest.raises(UserError, match="cannot resume .* with lr=0.2: the run used lr=0.1"):
        check_resumable(parse({"output_dir": str(run_dir), "lr": 0.2, "resume": True}))


def test_resume_reads_a_run_recorded_before_the_partition_registry(tmp_path: Path) -> None:
    """Older results recorded the partitioner's settings, not its name: the same partition."""
    run_dir = tmp_path / "run"
    config = parse({"output_dir": str(run_dir), "partition": "pathological", "resume": True})
    shard = {"_target_": "flwr_datasets.partitioner.ShardPartitioner", "num_partitions": 100}
    _recorded_run(tmp_path, config.record() | {"partition": shard})
    check_resumable(config)
    with pytest.raises(UserError, match="partition=iid: the run used partition=pathological"):
        check_resumable(parse({"output_dir": str(run_dir), "resume": True}))


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main.failure_status(UserError("lr must be > 0")) == ("lr must be > 0", 2)
    assert main.failure_status(ClientFailure("round 3: a client failed")) == (
        "the simulation failed: round 3: a client failed",
        1,
    )
    assert capsys.readouterr().err == ""  # no traceback for either
    try:
        settings: dict[str, int] = {}
        settings["missing"]  # a plain bug, as the simulation would raise it
    except KeyError as bug:
        wrapped = RuntimeError("An error was encountered. Ending simulation.")
        wrapped.__cause__ = bug
        message, status = main.failure_status(wrapped)
    assert status == 1 and message.startswith("the simulation failed unexpectedly")
    traceback = capsys.readouterr().err
    assert "Traceback (most recent call last)" in traceback and "KeyError" in traceback
    assert 'test_defects.py", line' in traceback  # where the bug is


def test_a_failed_download_says_why_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))  # refused at once
    root = tmp_path / "data"
    with pytest.raises(UserError) as raised:
        mnist.ensure_mnist(root, download=True)
    message = str(raised.value)
    assert "the download failed: http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message
    assert "refused" in message.lower()
    assert "dataset.root=" in message and "FEDAVG_MNIST_DATA" in message
    assert not root.exists()  # nothing left behind


def test_deployment_finds_flowers_executables_beside_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From a virtualenv that is not activated: PATH does not lead to Flower."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    path = Path(processes.flower_executable("flower-superlink"))
    assert path.parent == Path(sys.executable).parent and os.access(path, os.X_OK)
    assert processes.environment_path().split(os.pathsep)[0] == str(Path(sys.executable).parent)
    fake_python = tmp_path / "bin" / "python"
    fake_python.parent.mkdir()
    monkeypatch.setattr(sys, "executable", str(fake_python))
    with pytest.raises(UserError, match=f"flower-superlink not found beside {fake_python}"):
        processes.flower_executable("flower-superlink")


def test_atomic_writes_leave_no_temporary_file_and_name_the_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_text_atomic(target, "old")

    def fails(stream: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=f"cannot write {target}: No space left on device"):
        write_atomic(target, fails)
    assert target.read_text() == "old"  # the old file, whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]


def test_importing_any_module_changes_no_environment_and_no_flower_function() -> None:
    """No import-time side effects: not the engine's loops, not `RAY_ADDRESS`, nothing."""
    code = f"""
import importlib, json, os, sys
from flwr.server.superlink.fleet.vce import vce_api
import flwr.serverapp, flwr.clientapp
def flower_functions():
    return {{
        f"{{m.__name__}}.{{name}}": id(value)
        for m in (vce_api, flwr.serverapp, flwr.clientapp)
        for name, value in vars(m).items() if callable(value)
    }}
before_env, before_flower = dict(os.environ), flower_functions()
for name in {MODULES!r}:
    importlib.import_module(name)
print(json.dumps([dict(os.environ) == before_env, flower_functions() == before_flower]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True, True]


@pytest.mark.slow
def test_a_plain_install_runs_from_another_folder(tmp_path: Path) -> None:
    """`pip install .` (not editable) ships `conf/`: the CLI composes it from anywhere."""
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
        + ["--target", str(target), str(PROJECT_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "fedavg_mnist" / "conf" / "config.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-m", "fedavg_mnist.main", "model=mlp", "lr=-1"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: invalid config: lr must be > 0, got -1.0"
    shown = subprocess.run(
        [sys.executable, "-c", "import fedavg_mnist.main as m; print(m.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.stdout.strip().startswith(str(target))
    assert list(elsewhere.iterdir()) == []
