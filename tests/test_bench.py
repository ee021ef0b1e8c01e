from pathlib import Path

from benchmarks.round_time import Floor, client_tensors, compose_config, compute_floor, format_table
from fedavg_mnist.config import RunConfig
from fedavg_mnist.partitions import client_partitions


def _config(root: Path, tmp_path: Path) -> RunConfig:
    return compose_config(
        str(root),
        tmp_path / "out",
        [
            "model=mlp",
            "num_clients=4",
            "client_fraction=0.5",
            "local_epochs=1",
            "batch_size=10",
            "device=cpu",
            "dataset.download=false",
            "dataset.verify_checksums=false",
        ],
    )


def test_client_tensors_hold_each_sampled_clients_partition(
    synthetic_root: Path, tmp_path: Path
) -> None:
    cfg = _config(synthetic_root, tmp_path)
    clients = client_tensors(cfg)
    partitions = client_partitions(cfg)
    assert sorted(clients) == [0, 1]  # C=0.5 of K=4
    for partition_id, (images, labels) in clients.items():
        assert images.shape == (len(partitions[partition_id]), 1, 28, 28)
        assert labels.shape == (len(partitions[partition_id]),)


def test_cpu_floor_times_one_process_and_one_process_per_core(
    synthetic_root: Path, tmp_path: Path
) -> None:
    floor = compute_floor(_config(synthetic_root, tmp_path), rounds=3)
    assert floor.one_process_all_cores_s > 0
    assert floor.one_process_per_core_s is not None and floor.one_process_per_core_s > 0


def test_gpu_floor_has_no_per_core_way_and_table_marks_it() -> None:
    floor = Floor(one_process_all_cores_s=5.4, one_process_per_core_s=None)
    assert floor.floor_s == 5.4
    row = {
        "setting": {"name": "cnn_E5_B10"},
        "one_process_all_cores_s": 5.4,
        "one_process_per_core_s": None,
        "flower_round_s": 1.8,
        "flower_over_floor": 1.8 / 5.4,
        "flower_eval_s": 0.007,
        "flower_startup_s": 12.1,
    }
    table = format_table({"settings": [row], "fixed_cost": None})
    assert "| cnn_E5_B10 | 5.400 | — | 1.800 | 0.33 | 0.007 | 12.1 |" in table
    assert "smallest" not in table and "beyond" not in table  # stopped before its last part


def test_deployment_cost_reads_rounds_after_round_0_and_splits_off_evaluation(
    tmp_path: Path,
) -> None:
    from benchmarks.deployment_cost import round_figures
    from fedavg_mnist.storage import write_json_atomic

    history = [
        {"round": 0, "accuracy": 0.1, "seconds": 50.0, "eval_seconds": 1.0},  # start-up
        {"round": 1, "accuracy": 0.8, "seconds": 3.0, "eval_seconds": 1.0},
        {"round": 2, "accuracy": 0.9, "seconds": 5.0, "eval_seconds": 0.5},
        {"round": 3, "accuracy": 0.9, "seconds": 4.0, "eval_seconds": 1.0},
    ]
    write_json_atomic(tmp_path / "results.json", {"history": history})
    figures = round_figures(tmp_path)
    assert figures["round_seconds"] == 4.0  # median of 3, 5, 4: round 0 left out
    assert figures["train_seconds"] == 3.0  # median of 2, 4.5, 3
    assert figures["history"] == [(0, 0.1), (1, 0.8), (2, 0.9), (3, 0.9)]
