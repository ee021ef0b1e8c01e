"""The paper-table presets: what each sweeps, its caps and learning rates, and a real sweep."""

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_synthetic_mnist
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fedavg_mnist.analysis.paper import TABLES
from fedavg_mnist.config import RunConfig
from fedavg_mnist.overrides import CONF_DIR, compose_run_config, register_hydra_config
from fedavg_mnist.presets import lr_key


def _compose(*overrides: str) -> DictConfig:
    """Hydra's composed config, with what `RunConfig` leaves out: the sweep and `lr_table`."""
    register_hydra_config()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, "output_dir=."], return_hydra_config=True)


def _run(*overrides: str) -> RunConfig:
    """The run's config as the CLI composes and checks it."""
    return compose_run_config(overrides)


def _lr_table(preset: str) -> dict[str, float]:
    return {
        str(key): float(value) for key, value in _compose(f"+experiment={preset}").lr_table.items()
    }


def _sweep(cfg: DictConfig) -> dict[str, list[str]]:
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.name)
def test_each_preset_sweeps_exactly_its_paper_table(table) -> None:
    cfg = _run(f"+experiment={table.name}")
    assert cfg.model.name == table.cells[0].model
    assert cfg.stop_at_target is True
    slowest = max(cell.paper_rounds or 0 for cell in table.cells)
    assert cfg.num_rounds >= slowest  # the cap leaves room for the paper's slowest cell
    sweep = _sweep(_compose(f"+experiment={table.name}"))
    points: list[dict[str, str]] = [{}]
    for key, values in sweep.items():
        points = [{**point, key: value} for point in points for value in values]
    swept = set()
    for point in points:
        cell = _run(
            f"+experiment={table.name}", *(f"{key}={value}" for key, value in point.items())
        )
        swept.add((cell.partition, cell.client_fraction, cell.local_epochs, cell.batch_size))
    expected = {(c.partition, c.client_fraction, c.local_epochs, c.batch_size) for c in table.cells}
    assert swept == expected


def test_preset_uses_its_measured_lr_and_overrides_win() -> None:
    table = _lr_table("table1_mlp")
    cfg = _run("+experiment=table1_mlp", "partition=pathological", "batch_size=inf")
    assert cfg.batch_size is None  # B=∞
    assert cfg.lr == table[lr_key("pathological", 1, None)]
    # Hydra's null still means B=∞
    assert _run("+experiment=table1_mlp", "partition=pathological", "batch_size=null") == cfg
    # a rate measured for one C alone applies to that C, the (partition, E, B) rate elsewhere
    one_client = _run("+experiment=table1_mlp", "client_fraction=0.0", "batch_size=10")
    assert one_client.lr == table["iid_C0p0_E1_B10"]
    assert _run("+experiment=table1_mlp", "batch_size=10").lr == table["iid_E1_B10"]
    assert _run("+experiment=table1_mlp", "lr=0.0123").lr == 0.0123
    # a cell the table does not list falls back to the model's default η
    assert _run("+experiment=table1_cnn", "batch_size=50").lr == 0.1  # no rate measured


def test_presets_ship_the_best_rates_the_report_finds_in_the_saved_runs() -> None:
    """Each cell a preset runs, at the η the report reads as best from `docs/runs`."""
    from fedavg_mnist.analysis.saved_runs import best_runs, load_runs
    from fedavg_mnist.analysis.tables import table_results

    best = best_runs(load_runs([Path(__file__).resolve().parent.parent / "docs" / "runs"]))
    compared, drifted = 0, []
    for table in TABLES:
        for result in table_results(table, best):
            if result.choice is None:
                continue
            cell = result.cell
            batch = "inf" if cell.batch_size is None else cell.batch_size
            preset_lr = _run(
                f"+experiment={table.name}",
                f"partition={cell.partition}",
                f"client_fraction={cell.client_fraction}",
                f"local_epochs={cell.local_epochs}",
                f"batch_size={batch}",
            ).lr
            compared += 1
            if preset_lr != result.choice.best.lr:
                drifted.append(
                    (table.name, cell.row, cell.column, preset_lr, result.choice.best.lr)
                )
    assert compared >= 50  # every saved cell of the four tables
    assert drifted == []


def test_lr_grid_adds_the_papers_grid_to_a_preset() -> None:
    sweep = _sweep(_compose("+experiment=table4_mlp", "+lr_grid=thirds"))
    grid = [float(value) for value in sweep["lr"]]
    assert grid[0] == 0.01 and grid[-1] == 1.0
    assert all(abs(b / a - 10 ** (1 / 3)) < 0.01 for a, b in zip(grid, grid[1:], strict=False))
    assert {"partition", "local_epochs", "batch_size"} <= set(sweep)


@pytest.mark.slow
def test_a_preset_sweep_runs_through_the_cli(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data")
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "+experiment=table4_mlp",
        "partition=iid",
        "local_epochs=1",
        "batch_size=inf,10",
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
    lr_table = _lr_table("table4_mlp")  # a preset's table is not recorded, its η is
    for run in runs:
        cfg = run["config"]
        assert (cfg["model"]["name"], cfg["client_fraction"], cfg["stop_at_target"]) == (
            "mlp",
            0.1,
            True,
        )
        assert cfg["partition"] == "iid"  # recorded by name
        assert cfg["lr"] == lr_table[lr_key("iid", 1, cfg["batch_size"])]
        rounds = [r["round"] for r in run["history"]]
        last = run["history"][-1]["accuracy"]
        # two rounds, or fewer when the (easy, synthetic) target was reached: stop_at_target
        assert rounds == [0, 1, 2] or (rounds == [0, 1] and last >= run["target_accuracy"])
