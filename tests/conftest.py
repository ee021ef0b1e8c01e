"""Fixtures: small IDX files written the way MNIST's are, and helpers to run the CLI."""

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file: magic 0x000008<ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def synthetic_digits(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose bright row encodes the label, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num).astype(np.uint8)
    images = rng.integers(0, 40, (num, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label, :] = 255
    return images, labels


def write_synthetic_mnist(root: Path, num_train: int = 400, num_test: int = 100) -> Path:
    """Write all four MNIST files (plain IDX) under `<root>/MNIST/raw`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, num, seed in (("train", num_train, 1), ("t10k", num_test, 2)):
        images, labels = synthetic_digits(num, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")


def real_mnist_root() -> Path:
    """The real MNIST root from FEDAVG_MNIST_DATA; CI sets it, so there it must exist."""
    root = os.environ.get("FEDAVG_MNIST_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must set FEDAVG_MNIST_DATA to a folder holding MNIST/raw")
        pytest.skip("set FEDAVG_MNIST_DATA to the real MNIST root to run this test")
    return Path(root)


def run_cli(
    *overrides: str,
    timeout: float = 600,
    cwd: Path = PROJECT_ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m fedavg_mnist.main` with Hydra overrides, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "fedavg_mnist.main", *overrides],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*overrides: str, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start `python -m fedavg_mnist.main` without waiting, in a session of its own, so that
    `os.killpg` reaches the run and the Ray workers it starts."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedavg_mnist.main", *overrides],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


# The tiny run: 2 rounds of the 2NN on 4 clients, 2 a round, in the keys both launchers share.
TINY_SETTINGS: dict[str, bool | int | float | str] = {
    "model.name": "mlp",
    "num_clients": 4,
    "client_fraction": 0.5,
    "local_epochs": 1,
    "batch_size": 10,
    "num_rounds": 2,
    "dataset.download": False,
    "dataset.verify_checksums": False,
}


def tiny_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """The tiny run's Hydra overrides, on the synthetic IDX files under `root`."""
    settings = [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_SETTINGS.items()
    ]
    return [*settings, f"dataset.root={root}", f"hydra.run.dir={run_dir}", *extra]


@dataclass(frozen=True)
class ParallelSweep:
    """A two-point choice sweep of the tiny run, its points side by side (joblib), each
    tracked by W&B offline; what it printed. Read-only: a test that changes it copies it."""

    data_root: Path
    sweep_dir: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def parallel_sweep(tmp_path_factory: pytest.TempPathFactory) -> ParallelSweep:
    """Made once: a sweep costs two Rays, and the sweep's and the tracker's tests read it."""
    base = tmp_path_factory.mktemp("sweep")
    root, sweep_dir = write_synthetic_mnist(base / "data"), base / "sweep"
    settings = [a for a in tiny_overrides(root, sweep_dir) if not a.startswith("hydra.run")]
    result = run_cli(
        "-m",
        *settings,
        "seed=choice(0,1)",
        "tracking=wandb",
        "wandb_mode=offline",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        env={"WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"},  # no network
    )
    return ParallelSweep(root, sweep_dir, result)


@pytest.fixture
def flower_task_identity() -> Iterator[None]:
    """Messages need the identity Flower's runtime sets in each process."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TinyRun:
    """One real 2-round CLI run (`tiny_overrides`) on synthetic data, and what it printed."""

    data_root: Path
    run_dir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The tiny run, made once: the history that the other launchers, a second run of the same
    seed and a resumed run must give again. Read-only: a test that changes it copies it.
    """
    base = tmp_path_factory.mktemp("tiny")
    data_root, run_dir = write_synthetic_mnist(base / "data"), base / "run"
    result = run_cli(*tiny_overrides(data_root, run_dir))
    assert result.returncode == 0, result.stderr
    return TinyRun(data_root, run_dir, result.stdout, result.stderr)


def finished_history(run_dir: Path) -> list[tuple[int, float, float]]:
    """(round, accuracy, loss) of a finished run's `results.json`."""
    document = json.loads((run_dir / "results.json").read_text())
    assert document["finished"] is True
    return [(r["round"], r["accuracy"], r["loss"]) for r in document["history"]]
