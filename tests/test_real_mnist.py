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
