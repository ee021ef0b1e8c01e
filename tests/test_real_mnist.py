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
