"""The paper-table presets: what each sweeps, its caps and learning rates, and a real sweep."""

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_synthetic_mnist
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedavg_mnist.config import CONF_DIR, lr_key, register_schema
from fedavg_mnist.paper import TABLES

register_schema()


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "output_dir=."], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _sweep(cfg: DictConfig) -> dict[str, list[str]]:
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.name)
def test_each_preset_sweeps_exactly_its_paper_table(table) -> None:
    cfg = _compose(f"+experiment={table.name}")
    assert cfg.model.name == table.cells[0].model
    assert cfg.stop_at_target is True
    slowest = max(cell.paper_rounds or 0 for cell in table.cells)
    assert cfg.num_rounds >= slowest  # the cap leaves room for the paper's slowest cell
    sweep = _sweep(cfg)
    points: list[dict[str, str]] = [{}]
    for key, values in sweep.items():
        points = [{**point, key: value} for point in points for value in values]
    swept = set()
    for point in points:
        cell = _compose(
            f"+experiment={table.name}", *(f"{key}={value}" for key, value in point.items())
        )
        swept.add(
            (
                cell.partition._target_.rsplit(".", 1)[-1],
                cell.client_fraction,
                cell.local_epochs,
                cell.batch_size,
            )
        )
    names = {"iid": "IidPartitioner", "pathological": "ShardPartitioner"}
    expected = {
        (names[c.partition], c.client_fraction, c.local_epochs, c.batch_size) for c in table.cells
    }
    assert swept == expected


def test_preset_uses_its_measured_lr_and_overrides_win() -> None:
    cfg = _compose("+experiment=table1_mlp", "partition=pathological", "batch_size=null")
    assert cfg.lr == cfg.lr_table[lr_key("pathological", 1, None)]
    # a rate measured for one C alone applies to that C, the (partition, E, B) rate elsewhere
    one_client = _compose("+experiment=table1_mlp", "client_fraction=0.0", "batch_size=10")
    assert one_client.lr == one_client.lr_table["iid_C0p0_E1_B10"]
    assert _compose("+experiment=table1_mlp", "batch_size=10").lr == cfg.lr_table["iid_E1_B10"]
    assert _compose("+experiment=table1_mlp", "lr=0.0123").lr == 0.0123
    # a cell the table does not list falls back to the model's default η
    assert _compose("+experiment=table1_cnn", "batch_size=50").lr == 0.1  # no rate measured


def test_lr_grid_adds_the_papers_grid_to_a_preset() -> None:
    sweep = _sweep(_compose("+experiment=table4_mlp", "+lr_grid=thirds"))
    grid = [float(value) for value in sweep["lr"]]
    assert grid[0] == 0.01 and grid[-1] == 1.0
    assert all(abs(b / a - 10 ** (1 / 3)) < 0.01 for a, b in zip(grid, grid[1:], strict=False))
    assert {"partition", "local_epochs", "batch_size"} <= set(sweep)


def test_a_preset_sweep_runs_through_the_cli(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data")
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "+experiment=table4_mlp",
        "partition=iid",
        "local_epochs=1",
        "batch_size=null,10",
        "num_clients=4",
        "num_rounds=2",
        f"dataset.root={root}",
        "dataset.download=false",
        "dataset.verify_checksums=false",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert [run["config"]["batch_size"] for run in runs] == [None, 10]
    for run in runs:
        cfg = run["config"]
        assert (cfg["model"]["name"], cfg["client_fraction"], cfg["stop_at_target"]) == (
            "mlp",
            0.1,
            True,
        )
        assert cfg["lr"] == cfg["lr_table"][lr_key("iid", 1, cfg["batch_size"])]
        rounds = [r["round"] for r in run["history"]]
        last = run["history"][-1]["accuracy"]
        # two rounds, or fewer when the (easy, synthetic) target was reached: stop_at_target
        assert rounds == [0, 1, 2] or (rounds == [0, 1] and last >= run["target_accuracy"])
