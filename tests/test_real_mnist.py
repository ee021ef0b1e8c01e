"""Training on the real MNIST (root from FEDAVG_MNIST_DATA; CI points it at ../shared/mnist)."""

import json
from pathlib import Path

import pytest
from conftest import real_mnist_root, run_cli

pytestmark = pytest.mark.slow  # runs the CLI on the real MNIST


def test_mlp_reaches_92_percent_within_5_rounds(tmp_path: Path) -> None:
    root = real_mnist_root()
    run_dir = tmp_path / "run"
    result = run_cli(
        "model=mlp",
        "partition=iid",
        "client_fraction=0.1",
        "local_epochs=1",
        "batch_size=10",
        "lr=0.1",
        "num_rounds=5",
        f"dataset.root={root}",
        "dataset.download=false",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_parameters"] == 199_210
    assert max(r["accuracy"] for r in results["history"] if r["round"] >= 1) >= 0.92


def test_clients_read_the_real_training_set_as_the_whole_set_conversion() -> None:
    """The mapped IDX file gives every client the numbers converting all of MNIST gave."""
    import numpy as np
    import torch

    from fedavg_mnist.mnist import MNIST_MEAN, MNIST_STD, mnist_training_set

    training = mnist_training_set(str(real_mnist_root()), download=False, verify=True)
    assert training.images.shape == (60_000, 28, 28) and isinstance(training.images, np.memmap)
    whole = torch.from_numpy(np.asarray(training.images).astype(np.float32)).div_(255.0)
    whole = whole.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1).contiguous()
    indices = np.random.default_rng(0).permutation(60_000)[:600]
    images, _ = training.examples(indices)
    assert torch.equal(images, whole[torch.from_numpy(indices)])


def _real_config(**settings: object):
    from fedavg_mnist.settings import parse

    root = str(real_mnist_root())
    return parse({"dataset.root": root, "dataset.download": False, **settings})


def test_the_papers_partitions_of_the_real_training_set() -> None:
    """K=100. IID: 600 random examples each. Pathological non-IID: the training set sorted by
    label, cut into 200 runs of 300; each client holds exactly two of them. Every training
    example used once."""
    import numpy as np

    from fedavg_mnist.mnist import read_train_labels
    from fedavg_mnist.partitions import client_partitions

    config = _real_config(partition="pathological")
    labels = read_train_labels(config.dataset.root, download=False, verify=True)
    parts = client_partitions(config)
    assert [len(part) for part in parts] == [600] * 100
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60_000))
    # the label-sorted set as the partitioner sorts it: the run's shuffle, then a stable sort
    order = np.random.default_rng(config.seed).permutation(60_000)
    runs = order[np.argsort(labels[order], kind="stable")].reshape(200, 300)
    run_of = {int(index): number for number, run in enumerate(runs) for index in run}
    held = [sorted({run_of[int(index)] for index in part}) for part in parts]
    assert all(len(runs_held) == 2 for runs_held in held)  # 600 examples = two whole runs
    assert sorted(number for runs_held in held for number in runs_held) == list(range(200))
    assert sum(len(np.unique(labels[part])) <= 2 for part in parts) >= 90  # runs are one digit

    iid = client_partitions(_real_config(partition="iid"))
    assert [len(part) for part in iid] == [600] * 100
    assert np.array_equal(np.sort(np.concatenate(iid)), np.arange(60_000))
    assert min(len(np.unique(labels[part])) for part in iid) == 10


def test_label_counts_figure_of_any_partition(tmp_path: Path) -> None:
    """The heat map's command: the counts of the partition a run would train on."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    from fedavg_mnist.analysis.label_counts import label_counts

    out = tmp_path / "figures" / "dirichlet"
    settings = ["partition=dirichlet", "partition_alpha=0.1", f"dataset.root={real_mnist_root()}"]
    result = subprocess.run(
        [sys.executable, "-m", "fedavg_mnist.analysis.label_counts", *settings, f"--out={out}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    counts = label_counts(_real_config(partition="dirichlet", partition_alpha=0.1))
    assert counts.shape == (100, 10) and counts.sum() == 60_000
    assert (counts > 0).sum(axis=1).mean() < 7  # α=0.1: a few labels per client
    bad = subprocess.run(
        [sys.executable, "-m", "fedavg_mnist.analysis.label_counts", "partition_classes=0"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid config: partition_classes")
