"""The real CLI in a subprocess: bad input, a tiny end-to-end run and a sweep."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyRun, finished_history, run_cli, tiny_overrides

pytestmark = pytest.mark.slow  # each test starts the CLI in a process of its own


def _tiny(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(root, run_dir, *extra)


def _assert_one_line_error(result, pattern: str, status: int = 2) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("model=resnet", "unknown model 'resnet': choose one of cnn, mlp"),
        ("partition=shards", "partition must be one of iid, pathological, dirichlet, classes"),
        ("partition_alpha=0", "partition_alpha must be > 0 (the Dirichlet's α), got 0"),
        ("partition_classes=11", "partition_classes must be in 1..10 (labels per client), got 11"),
        ("client_fraction=1.5", "client_fraction must be in [0, 1]"),
        ("client_fraction=-0.1", "client_fraction must be in [0, 1]"),
        ("local_epochs=0", "local_epochs must be >= 1"),
        ("batch_size=0", "batch_size must be >= 1, or inf"),
        ("num_rounds=0", "num_rounds must be >= 1"),
        ("lr=0", "lr must be > 0"),
        ("lr=-1", "lr must be > 0"),
        ("local_epochs=many", "local_epochs must be an integer, got 'many'"),
        ("no_such_key=1", "Could not override 'no_such_key'"),
        ("strategy.name=fedsgd", "strategy.name must be one of fedadagrad, fedadam, fedavg,"),
        ("strategy.server_momentum=1", "strategy.server_momentum must be in [0, 1), got 1"),
    ],
)
def test_bad_settings_end_in_one_line(tmp_path: Path, override: str, pattern: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*_tiny(tmp_path / "data", run_dir, override))
    _assert_one_line_error(result, pattern)
    assert not (run_dir / "results.json").exists()


def test_k_that_does_not_divide_into_shards(synthetic_root: Path, tmp_path: Path) -> None:
    result = run_cli(
        *_tiny(synthetic_root, tmp_path / "run", "partition=pathological", "num_clients=7")
    )
    _assert_one_line_error(result, "invalid partition")
    assert not (tmp_path / "run").exists()  # told before Hydra writes its `.hydra/`


def test_missing_mnist_says_where_to_put_it_and_writes_nothing(tmp_path: Path) -> None:
    """Without `hydra.run.dir`: no `outputs/<date>/<time>/.hydra`, no empty data folder."""
    overrides = [o for o in _tiny(tmp_path / "empty", tmp_path / "run") if "run.dir" not in o]
    result = run_cli(*overrides, cwd=tmp_path)
    _assert_one_line_error(result, f"MNIST not found in {tmp_path / 'empty' / 'MNIST' / 'raw'}")
    assert "dataset.root=" in result.stderr and "FEDAVG_MNIST_DATA" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_truncated_mnist_file(synthetic_root: Path, tmp_path: Path) -> None:
    labels = synthetic_root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    result = run_cli(*_tiny(synthetic_root, tmp_path / "run"))
    _assert_one_line_error(result, "corrupt MNIST file")


def test_corrupted_mnist_fails_its_checksum(synthetic_root: Path, tmp_path: Path) -> None:
    result = run_cli(*_tiny(synthetic_root, tmp_path / "run"), "dataset.verify_checksums=true")
    _assert_one_line_error(result, "SHA-256 does not match")


def test_unwritable_output_dir(synthetic_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(*_tiny(synthetic_root, blocker / "run"))
    _assert_one_line_error(result, "is not writable")


def test_existing_results_are_not_overwritten(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"keep": true}')
    result = run_cli(*_tiny(synthetic_root, run_dir))
    _assert_one_line_error(result, "already exists")
    assert (run_dir / "results.json").read_text() == '{"keep": true}'
    assert not (run_dir / ".hydra").exists()


def test_two_rounds_end_to_end_write_valid_results(tiny_run: TinyRun) -> None:
    run_dir = tiny_run.run_dir
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] is True
    assert [r["round"] for r in results["history"]] == [0, 1, 2]
    assert all(
        0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 and r["seconds"] > 0
        for r in results["history"]
    )
    assert results["config"]["model"]["name"] == "mlp"
    assert results["config"]["num_clients"] == 4
    assert results["config"]["batch_size"] == 10
    assert results["versions"]["flwr"] == "1.42.0"
    assert results["num_parameters"] == 199_210
    assert results["completed_rounds"] == 2
    best = max(r["accuracy"] for r in results["history"][1:])
    assert results["best_accuracy"] == best
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    with np.load(run_dir / "partitions.npz") as saved:  # each client's example indices
        assert saved["offsets"].tolist() == [0, 100, 200, 300, 400]
        assert sorted(saved["indices"].tolist()) == list(range(400))
    for round_number in (0, 1, 2):
        assert f"round {round_number:4d}  accuracy" in tiny_run.stdout
    assert "best accuracy" in tiny_run.stdout
    assert str(run_dir / "results.json") in tiny_run.stdout
    assert "Traceback" not in tiny_run.stderr


def test_same_seed_same_history(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The tiny run again, with Flower's own polling instead of ours: the same history."""
    again = tmp_path / "again"
    assert run_cli(*_tiny(tiny_run.data_root, again, "fast_polling=false")).returncode == 0
    first = json.loads((tiny_run.run_dir / "results.json").read_text())
    assert first["config"]["fast_polling"] is True
    assert finished_history(again) == finished_history(tiny_run.run_dir)


def test_a_strategy_by_name_runs_through_the_cli(tiny_run: TinyRun, tmp_path: Path) -> None:
    """Flower's FedProx on the tiny run: its settings recorded, a history of its own."""
    run_dir = tmp_path / "fedprox"
    strategy = ("strategy.name=fedprox", "strategy.proximal_mu=0.5")
    result = run_cli(*_tiny(tiny_run.data_root, run_dir, *strategy))
    assert result.returncode == 0, result.stderr
    document = json.loads((run_dir / "results.json").read_text())
    assert document["config"]["strategy"]["name"] == "fedprox"
    assert document["config"]["strategy"]["proximal_mu"] == 0.5
    assert finished_history(run_dir)[0] == finished_history(tiny_run.run_dir)[0]  # one start
    assert finished_history(run_dir) != finished_history(tiny_run.run_dir)


def test_stop_at_target_ends_the_run_at_the_first_round_reaching_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        *_tiny(
            synthetic_root, run_dir, "num_rounds=6", "target_accuracy=0.05", "stop_at_target=true"
        )
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] is True
    assert results["first_round_at_target"] == 1
    assert [r["round"] for r in results["history"]] == [0, 1]


def test_a_results_file_in_the_working_directory_does_not_block_a_run(tmp_path: Path) -> None:
    """Without hydra.run.dir, results go under outputs/: ./results.json is someone else's."""
    (tmp_path / "results.json").write_text("{}")
    result = run_cli("lr=0", cwd=tmp_path)
    _assert_one_line_error(result, "lr must be > 0")
    assert (tmp_path / "results.json").read_text() == "{}"
