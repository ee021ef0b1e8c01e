"""The report on a known set of fake `results.json` files, checked cell by cell."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT

from fedavg_mnist.analysis.report import write_report
from fedavg_mnist.analysis.saved_runs import load_runs
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import partition_name
from fedavg_mnist.rounds_to_target import first_round_at_target, rounds_to_target, summarize

# A partition as results.json records it: by name, or (older files) as the flwr-datasets
# partitioner's settings. The fake runs use both, the same cells holding runs of each form.
IID, NON_IID = "iid", "pathological"
OLD_IID: dict[str, object] = {"_target_": "flwr_datasets.partitioner.IidPartitioner"}
OLD_SHARDS: dict[str, object] = {
    "_target_": "flwr_datasets.partitioner.ShardPartitioner",
    "num_partitions": 100,
    "partition_by": "label",
    "num_shards_per_partition": 2,
    "shard_size": None,
    "seed": 0,
}


def fake_run(
    path: Path,
    accuracies: list[float],
    *,
    model: str = "mlp",
    partition: str | dict[str, object] = IID,
    client_fraction: float = 0.1,
    local_epochs: int = 1,
    batch_size: int | None = 10,
    lr: float = 0.1,
    num_clients: int = 100,
    num_rounds: int | None = None,
    finished: bool = True,
    normalize: bool = True,
    init: str | None = None,
    machines: list[dict[str, object]] | None = None,
    strategy: dict[str, object] | None = None,
    seed: int = 0,
) -> None:
    """Write a results.json whose round r (from 0) has test accuracy accuracies[r]."""
    path.mkdir(parents=True)
    document = {
        "config": {
            "model": {"name": model, **({"init": init} if init else {})},
            "partition": partition,
            "num_clients": num_clients,
            "client_fraction": client_fraction,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "num_rounds": num_rounds if num_rounds is not None else len(accuracies) - 1,
            "seed": seed,
            "dataset": {"normalize": normalize},
            **({"strategy": strategy} if strategy else {}),
        },
        "target_accuracy": 0.97 if model == "mlp" else 0.99,
        "finished": finished,
        "wall_seconds": 12.5,
        "history": [{"round": r, "accuracy": a, "loss": 1.0 - a} for r, a in enumerate(accuracies)],
        **({"machines": machines} if machines else {}),
    }
    (path / "results.json").write_text(json.dumps(document))


def test_the_two_readings_of_rounds_to_target_are_kept_apart() -> None:
    history = [
        {"round": r, "accuracy": a} for r, a in enumerate([0.1, 0.9, 0.95, 0.96, 0.98, 0.97])
    ]
    summary = summarize(history, 0.97)
    assert summary["first_round_at_target"] == 4  # a whole round: where stop_at_target stops
    assert summary["rounds_to_target"] == 3.5  # the paper's interpolated crossing
    assert (summary["best_accuracy"], summary["best_round"]) == (0.98, 4)
    assert first_round_at_target([0, 1], [0.99, 0.5], 0.97) is None  # round 0 is not trained
    assert summarize(history, 0.99)["rounds_to_target"] is None


def test_crossing_is_interpolated_on_the_best_so_far_curve() -> None:
    assert rounds_to_target([0, 1, 2, 3, 4], [0.1, 0.9, 0.95, 0.96, 0.98], 0.97) == 3.5
    # the dip at round 2 does not count: the curve holds 0.968 until round 3
    assert rounds_to_target([0, 1, 2, 3], [0.1, 0.968, 0.95, 0.972], 0.97) == pytest.approx(2.5)
    assert rounds_to_target([0, 1, 2], [0.1, 0.9, 0.97], 0.97) == 2.0
    assert rounds_to_target([0, 1, 2], [0.1, 0.9, 0.96], 0.97) is None
    # rounds evaluated every 5: the crossing lies between them
    assert rounds_to_target([0, 5, 10], [0.1, 0.95, 0.99], 0.97) == 7.5


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multirun"
    fake_run(sweep / "0", [0.1, 0.9, 0.95, 0.96, 0.98], client_fraction=0.0)  # 3.5 rounds
    cpu: dict[str, object] = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}
    gpu: dict[str, object] = {"cpu": "Xeon", "gpu": "H200"}
    # 1.5 rounds: the best η of C=0.1; begun on a CPU, resumed on a GPU
    fake_run(sweep / "1", [0.1, 0.96, 0.98], lr=0.1, machines=[cpu, gpu])
    fake_run(sweep / "2", [0.1, 0.9, 0.97], lr=0.2, partition=OLD_IID)  # 2.0 rounds
    fake_run(sweep / "3", [0.1, 0.968, 0.95, 0.972], client_fraction=0.2)  # 2.5 rounds
    fake_run(sweep / "4", [0.1, 0.5], client_fraction=0.5, num_rounds=100, finished=False)
    fake_run(sweep / "5", [0.1, 0.5, 0.6], client_fraction=1.0)
    # non-IID B=10, C=0: neither η reaches 97%; the better final accuracy wins
    fake_run(sweep / "6", [0.1, 0.8], partition=OLD_SHARDS, client_fraction=0.0, lr=0.05)
    fake_run(sweep / "7", [0.1, 0.85], partition=NON_IID, client_fraction=0.0, lr=0.1)
    fake_run(sweep / "8", [0.1, 0.98], num_clients=10)  # in no paper table
    fake_run(sweep / "9", [0.1, 0.99], normalize=False)  # another setting than C=0.1's cell
    fake_run(sweep / "10", [0.1, 0.5, 0.99], init="truncated_normal")  # and another
    # FedProx on C=0.1's cell, sooner than FedAvg: another configuration, not the paper's cell
    fake_run(sweep / "11", [0.1, 0.99], strategy={"name": "fedprox", "proximal_mu": 0.1})
    return sweep


def test_both_recorded_forms_of_a_partition_read_as_its_name() -> None:
    assert partition_name({"partition": IID}) == "iid"
    assert partition_name({"partition": NON_IID}) == "pathological"
    assert partition_name({"partition": OLD_IID}) == "iid"
    assert partition_name({"partition": OLD_SHARDS}) == "pathological"


def _cells(csv_path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(csv_path) as stream:
        return {(r["table"], r["row"], r["column"]): r for r in csv.DictReader(stream)}


def test_report_cells(fake_sweep: Path, tmp_path: Path) -> None:
    md_path, csv_path = write_report(load_runs([fake_sweep]), tmp_path / "report")
    cells = _cells(csv_path)
    tables = {table for table, _, _ in cells}
    assert tables == {"table1_mlp", "table4_mlp"}  # C=0.1 E=1 B=10 is also a Table 4 row
    assert len([key for key in cells if key[0] == "table1_mlp"]) == 20

    c0 = cells[("table1_mlp", "0.0", "IID, B=10")]
    assert (c0["status"], c0["rounds_to_target"], c0["lr"]) == ("reached", "3.5", "0.1")
    assert (c0["paper_rounds"], c0["ratio_to_paper"]) == ("316", f"{3.5 / 316:.2f}")

    c1 = cells[("table1_mlp", "0.1", "IID, B=10")]
    assert (c1["rounds_to_target"], c1["lr"], c1["lrs_tried"]) == ("1.5", "0.1", "0.1 0.2")
    assert (c1["lr_established"], c1["lrs_finished"], c1["lrs_unsettled"]) == (
        "true",
        "0.1 0.2",
        "",
    )
    assert c1["speedup"] == f"{3.5 / 1.5:.2f}"
    assert (c1["paper_rounds"], c1["paper_speedup"]) == ("87", f"{316 / 87:.2f}")

    c2 = cells[("table1_mlp", "0.2", "IID, B=10")]
    assert (c2["rounds_to_target"], c2["speedup"]) == ("2.5", "1.40")

    c5 = cells[("table1_mlp", "0.5", "IID, B=10")]
    assert (c5["status"], c5["rounds_to_target"], c5["completed_rounds"]) == ("unfinished", "", "1")

    c10 = cells[("table1_mlp", "1.0", "IID, B=10")]
    assert (c10["status"], c10["best_accuracy"], c10["speedup"]) == ("not reached", "0.6000", "")

    non_iid = cells[("table1_mlp", "0.0", "non-IID, B=10")]
    assert (non_iid["status"], non_iid["lr"], non_iid["final_accuracy"]) == (
        "not reached",
        "0.1",
        "0.8500",
    )

    missing = cells[("table1_mlp", "0.5", "IID, B=∞")]
    assert (missing["status"], missing["paper_rounds"], missing["results"]) == ("not run", "", "")

    table4 = cells[("table4_mlp", "FedAvg E=1 B=10", "IID")]
    assert (table4["rounds_to_target"], table4["paper_rounds"]) == ("1.5", "92")

    markdown = md_path.read_text()
    assert "| 0.1 | not run | 1474 (1.0×) |  | 2 (2.3×) | 87 (3.6×) | 0.02 |" in markdown
    assert "unfinished (best 50.00% after 1)" in markdown
    assert "— (best 60.00% in 2)" in markdown
    assert "0.1 (best of 2, 2 run to the end)" in markdown
    assert "### Other configurations" in markdown
    assert (
        "| mlp | fedavg | IID | 10 | 0.1 | 1 | 10 | standardized | pytorch | 0.1 | 1 | 0.9800 |"
        in markdown
    )
    row = "| mlp | fedavg | IID | 100 | 0.1 | 1 | 10 | [0, 1] | pytorch | 0.1 | 1 | 0.9900 |"
    assert row in markdown
    row = (
        "| mlp | fedavg | IID | 100 | 0.1 | 1 | 10 | standardized | truncated_normal | 0.1 | 2 "
        "| 0.9900 |"
    )
    assert row in markdown
    row = "| mlp | fedprox(proximal_mu=0.1) | IID | 100 | 0.1 | 1 | 10 | standardized | pytorch |"
    assert row in markdown
    assert "#### Table 1, 2NN (E=1)" in markdown and "#### Table 4, 2NN (C=0.1)" in markdown
    every_cell = markdown[markdown.index("### Every run cell") :]
    rows = [
        "| IID, B=10, C=0.0 | 3.5 | 316 | 0.01 | 0.1 | 4 | 0.2 min | 2-core CPU (not recorded) "
        "| reached |",
        "| IID, B=10, C=0.1 | 1.5 (2.3×) | 87 (3.6×) | 0.02 | 0.1 | 2 | 0.2 min "
        "| AMD EPYC (2 cores) + H200 | reached |",
        "| IID, B=10, C=0.5 | — | 75 (4.2×) |  | 0.1 | 1 | 0.2 min | 2-core CPU (not recorded) "
        "| unfinished |",
        "| IID, FedAvg E=1 B=10 | 1.5 | 92 (16.0×) | 0.02 | 0.1 | 2 | 0.2 min "
        "| AMD EPYC (2 cores) + H200 | reached |",
    ]
    for row in rows:
        assert row in every_cell
    assert "IID, B=∞" not in every_cell  # cells without a run are left out


def test_a_run_begun_without_a_round_reads_as_started(tmp_path: Path) -> None:
    fake_run(tmp_path / "runs" / "0", [0.1], client_fraction=0.5, num_rounds=100, finished=False)
    md_path, _ = write_report(load_runs([tmp_path / "runs"]), tmp_path / "report")
    assert "| 0.5 | not run | — |  | started, no round yet | 75 (4.2×) |  |" in md_path.read_text()


def test_a_rate_stopped_too_soon_is_not_beaten(tmp_path: Path) -> None:
    """The rule for "best η": a rate loses only once run to the target, or for 1.5 times the
    winner's rounds without reaching it; a cell whose other rates did neither is marked."""
    from fedavg_mnist.analysis.saved_runs import best_runs, load_runs

    runs = tmp_path / "runs"
    winner = [0.1, 0.5, 0.9, 0.96, 0.98]  # crosses 97% at round 3.5
    fake_run(runs / "a_0.1", winner, lr=0.1)
    fake_run(runs / "a_0.2", [0.1, 0.5, 0.6], lr=0.2, num_rounds=100, finished=False)  # stopped
    fake_run(runs / "a_0.05", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], lr=0.05)  # 6 >= 1.5 x 3.5
    fake_run(runs / "b_0.1", winner, lr=0.1, client_fraction=0.2)
    fake_run(runs / "b_0.2", [0.1, 0.2, 0.3, 0.4, 0.5, 0.97], lr=0.2, client_fraction=0.2)
    # a rate tried twice counts once, at its better run
    fake_run(runs / "b_0.2_again", [0.1, 0.2], lr=0.2, client_fraction=0.2, finished=False)

    choices = {s.client_fraction: c for s, c in best_runs(load_runs([runs])).items()}
    a, b = choices[0.1], choices[0.2]
    assert a.best.lr == 0.1 and a.lrs_tried == [0.05, 0.1, 0.2]
    assert (a.lrs_finished, a.lrs_unsettled, a.established) == ([0.05, 0.1], [0.2], False)
    assert b.best.lr == 0.1 and b.lrs_tried == [0.1, 0.2] and b.established

    md_path, csv_path = write_report(load_runs([runs]), tmp_path / "report")
    cell = _cells(csv_path)[("table1_mlp", "0.1", "IID, B=10")]
    assert (cell["lr_established"], cell["lrs_unsettled"]) == ("false", "0.2")
    assert "0.1 (best of 3, 2 run to the end) † 0.2" in md_path.read_text()


def test_seeds_of_one_cell_read_with_their_spread_and_interval(tmp_path: Path) -> None:
    """Five seeds of Table 1's 2NN IID C=0 B=10 cell: mean, std, range, 95% CI (Student's t)
    of rounds to target, how many reached it, beside the paper's 316; the cell's table entry
    is its seed 0, not the luckiest seed."""
    import statistics

    from fedavg_mnist.analysis.seeds import seed_groups, t_quantile

    runs = tmp_path / "runs"
    crossings = {0: 300, 1: 310, 2: 320, 3: 330}  # each run reaches 97% at exactly that round
    for seed, at in crossings.items():
        fake_run(runs / f"s{seed}", [0.1] * at + [0.97], client_fraction=0.0, seed=seed)
    fake_run(runs / "s4", [0.1, 0.5], client_fraction=0.0, seed=4, num_rounds=400, finished=False)
    (group,) = seed_groups(load_runs([runs]))
    assert group.seeds == [0, 1, 2, 3, 4] and (group.reached, group.unfinished) == (4, 1)
    rounds = [float(r) for r in crossings.values()]
    half = t_quantile(3) * statistics.stdev(rounds) / 2
    assert group.interval == pytest.approx((315 - half, 315 + half))
    assert t_quantile(3) == 3.182 and t_quantile(100) == 1.96

    md_path, csv_path = write_report(load_runs([runs]), tmp_path / "report")
    markdown = md_path.read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| mlp fedavg iid"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:4] == ["0.1", "0, 1, 2, 3, 4", "4 of 5 (1 unfinished)"]
    assert cells[4] == f"315.0 ± {statistics.stdev(rounds):.1f}" and cells[5] == "300.0–330.0"
    assert cells[7:9] == ["316", "yes"]
    assert _cells(csv_path)[("table1_mlp", "0.0", "IID, B=10")]["rounds_to_target"] == "300.0"


def _module(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", name, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_and_plot_commands(
    fake_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedavg_mnist.analysis import plot, report

    assert report.main([str(fake_sweep)]) == 0
    assert "12 runs" in capsys.readouterr().out
    assert (fake_sweep / "table.md").is_file() and (fake_sweep / "table.csv").is_file()

    assert plot.main([str(fake_sweep / "0"), str(fake_sweep / "1")]) == 0
    png, pdf = fake_sweep / "0" / "accuracy_curves.png", fake_sweep / "0" / "accuracy_curves.pdf"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_figure_2_keeps_the_best_rate_per_method_in_a_panel_per_partition(tmp_path: Path) -> None:
    from fedavg_mnist.analysis.figures import method_label
    from fedavg_mnist.analysis.figures import partition_name as paper_partition
    from fedavg_mnist.analysis.saved_runs import best_runs, load_runs

    runs = tmp_path / "runs"
    fake_run(runs / "sgd_0.1", [0.1, 0.5, 0.9], batch_size=None, lr=0.1)
    fake_run(runs / "sgd_0.2", [0.1, 0.9, 0.98], batch_size=None, lr=0.2)  # the best rate
    fake_run(runs / "avg", [0.1, 0.97], local_epochs=5, batch_size=10, lr=0.1, partition=OLD_SHARDS)
    fake_run(runs / "avg_new", [0.1, 0.5], local_epochs=5, batch_size=10, lr=0.2, partition=NON_IID)
    best = best_runs(load_runs([runs]))
    kept = {choice.best.path.parent.name for choice in best.values()}
    assert kept == {"sgd_0.2", "avg"}  # "avg_new", recorded by name, is the same setting
    documents = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/results.json")}
    assert method_label(documents["sgd_0.2"]) == "FedSGD E=1 B=∞ η=0.2"
    assert method_label(documents["avg"]) == "FedAvg E=5 B=10 η=0.1"
    assert (paper_partition(documents["sgd_0.2"]), paper_partition(documents["avg"])) == (
        "IID",
        "non-IID",
    )
    assert paper_partition(documents["avg_new"]) == "non-IID"
    plot = _module("fedavg_mnist.analysis.plot", str(runs), "--best-lr", "--by-partition")
    assert plot.returncode == 0, plot.stderr
    assert "2 runs" in plot.stdout
    assert (runs / "accuracy_curves.png").read_bytes().startswith(b"\x89PNG")


def test_figure_2_of_one_partition_has_one_panel(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake_run(runs / "sgd", [0.1, 0.5, 0.9], batch_size=None, lr=0.1)
    fake_run(runs / "avg", [0.1, 0.97], local_epochs=5, batch_size=10, lr=0.1)
    plot = _module("fedavg_mnist.analysis.plot", str(runs), "--best-lr", "--by-partition")
    assert plot.returncode == 0, plot.stderr
    assert "2 runs" in plot.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "fedavg_mnist.analysis.report",
        "fedavg_mnist.analysis.plot",
        "fedavg_mnist.analysis.comparison",
    ],
)
def test_commands_fail_in_one_line(name: str, tmp_path: Path) -> None:
    for args, pattern in (
        ([str(tmp_path / "absent")], "no such file or directory"),
        ([str(tmp_path)], "no results.json under"),
    ):
        result = _module(name, *args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{")
    result = _module(name, str(broken))
    assert result.returncode == 2 and "cannot read results" in result.stderr


def test_results_of_schema_1_read_with_one_meaning_per_field(tmp_path: Path) -> None:
    """Version 1 files held the first round at target in `rounds_to_target`; read now, the
    field is the best-so-far crossing, as in every file written today."""
    from fedavg_mnist.records import SCHEMA_VERSION, load_results

    accuracies = [0.1, 0.9, 0.96, 0.95, 0.98]  # crossing at 3.5, first at round 4
    fake_run(tmp_path / "old", accuracies)
    path = tmp_path / "old" / "results.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({**old, "schema_version": 1, "rounds_to_target": 4}))
    document = load_results(path)
    assert document["schema_version"] == SCHEMA_VERSION == 2
    assert (document["rounds_to_target"], document["first_round_at_target"]) == (3.5, 4)
    assert document["migrated_from_schema_version"] == 1
    assert document["history"] == old["history"]

    path.write_text(json.dumps({**old, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match="newer than this code's"):
        load_results(path)


def test_client_losses_figure_reads_the_clients_of_each_round(tmp_path: Path) -> None:
    fake_run(tmp_path / "run", [0.1, 0.5, 0.8])
    path = tmp_path / "run" / "results.json"
    document = json.loads(path.read_text())
    for record in document["history"][1:]:
        record["clients"] = [
            {"partition": p, "examples": 600, "train_loss": 0.5 / record["round"] + p / 100,
             "train_loss_first_epoch": 0.6, "train_loss_last_epoch": 0.4, "train_seconds": 1.0}
            for p in (3, 7)
        ]  # fmt: skip
    path.write_text(json.dumps(document))
    drawn = _module("fedavg_mnist.analysis.client_losses", str(tmp_path / "run"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "run" / "client_losses.png").read_bytes().startswith(b"\x89PNG")
    from fedavg_mnist.analysis.client_losses import client_losses

    assert [r for r, _ in client_losses(document)] == [1, 2]
    fake_run(tmp_path / "old", [0.1, 0.5])  # recorded before clients were
    refused = _module("fedavg_mnist.analysis.client_losses", str(tmp_path / "old"))
    assert refused.returncode == 2 and refused.stderr.startswith("error: the run recorded no")


def test_figures_fit_the_data_mark_unfinished_runs_and_keep_colours(tmp_path: Path) -> None:
    """A sweep whose runs end far below the target still shows them; a run stopped early
    reads as unfinished, not as a plateau; a setting has one colour in every panel."""
    from matplotlib.figure import Figure

    from fedavg_mnist.analysis.figures import colours_for, draw_accuracy, figure_title

    fake_run(tmp_path / "low", [0.1, 0.4, 0.58], lr=0.5)
    fake_run(tmp_path / "stopped", [0.1, 0.9, 0.95], num_rounds=100, finished=False)
    fake_run(tmp_path / "other", [0.1, 0.9, 0.97], partition=NON_IID)
    documents = {p.name: json.loads((p / "results.json").read_text()) for p in tmp_path.iterdir()}
    colours = colours_for(list(documents.values()))
    left, right = Figure().subplots(1, 2)
    draw_accuracy(left, [documents["low"], documents["stopped"]], colours=colours)
    draw_accuracy(right, [documents["other"]], colours=colours)
    assert left.get_ylim()[0] <= 0.4  # the 2NN run best at 58% is on the axes
    labels = [line.get_label() for line in left.get_lines()]
    assert any(label.endswith("(unfinished after 2)") for label in labels)
    stopped = next(line for line in left.get_lines() if "unfinished" in str(line.get_label()))
    assert stopped.get_linestyle() == "--"
    assert stopped.get_color() == right.get_lines()[0].get_color()  # both E=1 B=10 η=0.1
    assert left.xaxis.get_major_formatter()(2.0, 0) == "2"  # not 2×10^0
    assert figure_title(list(documents.values())).startswith("MNIST, 2NN, K=100, C=0.1:")


def test_figure2_panels_give_each_method_its_own_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine methods, one whose best η differs between the panels: no two curves of a panel
    share a colour, and a method has the same colour in both panels."""
    from matplotlib.axes import Axes

    from fedavg_mnist.analysis import figures

    methods = [(1, None), (5, None), (1, 50), (20, None), (1, 10), (5, 50), (20, 50), (5, 10)]
    methods.append((20, 10))
    panels: dict[str, list[dict[str, object]]] = {"IID": [], "non-IID": []}
    for title, partition in (("IID", IID), ("non-IID", NON_IID)):
        for epochs, batch in methods:
            lr = 0.215 if (epochs, batch, title) == (1, 50, "IID") else 0.1
            path = tmp_path / f"{title}_{epochs}_{batch}"
            fake_run(path, [0.1, 0.5], local_epochs=epochs, batch_size=batch, lr=lr,
                     partition=partition)  # fmt: skip
            panels[title].append(json.loads((path / "results.json").read_text()))
    drawn: list[dict[str, object]] = []
    real_draw = figures.draw_accuracy

    def spy(ax: Axes, documents: list[dict[str, object]], **kwargs: object) -> None:
        real_draw(ax, documents, **kwargs)  # type: ignore[arg-type]
        curves = [line for line in ax.get_lines() if "target" not in str(line.get_label())]
        drawn.append({str(c.get_label()).split(" η=")[0]: c.get_color() for c in curves})
        assert len(curves) == 9 and len({str(c.get_color()) for c in curves}) == 9

    monkeypatch.setattr(figures, "draw_accuracy", spy)
    figures.plot_accuracy([], [tmp_path / "figure2.png"], panels=panels)
    assert len(drawn) == 2 and drawn[0] == drawn[1]
    assert (tmp_path / "figure2.png").read_bytes().startswith(b"\x89PNG")


def test_seeds_are_drawn_as_a_mean_curve_with_a_band(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from fedavg_mnist.analysis.figures import draw_accuracy

    for seed, accuracies in enumerate(([0.1, 0.5, 0.9, 0.97], [0.1, 0.7, 0.8], [0.1, 0.6, 0.95])):
        fake_run(tmp_path / str(seed), accuracies, seed=seed)
    documents = [json.loads((tmp_path / str(s) / "results.json").read_text()) for s in range(3)]
    ax = Figure().subplots()
    draw_accuracy(ax, documents)
    (mean, target) = ax.get_lines()
    assert "(3 seeds: mean, band min–max, to round 2)" in str(mean.get_label())
    assert np.asarray(mean.get_ydata()).tolist() == pytest.approx([0.6, (0.9 + 0.8 + 0.95) / 3])
    assert len(ax.collections) == 1  # the band


def test_strategies_compare_by_partition_over_seeds(tmp_path: Path) -> None:
    """Two strategies on two partitions, two seeds each: the report's comparison gives each
    (strategy, partition) its mean ± std of rounds to target over the seeds that reached it,
    a strategy no seed of which reached it its best accuracy; the command draws the bars."""
    from fedavg_mnist.analysis import comparison

    runs = tmp_path / "runs"
    fedprox = {"name": "fedprox", "proximal_mu": 0.1}
    crossings = {  # (strategy, partition, seed): round at which 97% is reached
        ("fedavg", NON_IID, 0): 100,
        ("fedavg", NON_IID, 1): 120,
        ("fedavg", IID, 0): 30,
        ("fedavg", IID, 1): 34,
        ("fedprox", NON_IID, 0): 90,
        ("fedprox", NON_IID, 1): 96,
    }
    for (name, partition, seed), at in crossings.items():
        fake_run(
            runs / f"{name}_{partition}_{seed}",
            [0.1] * at + [0.97],
            partition=partition,
            strategy=fedprox if name == "fedprox" else None,
            seed=seed,
        )
    for seed in (0, 1):  # FedProx on IID: capped below the target, one seed stopped early
        fake_run(
            runs / f"fedprox_iid_{seed}",
            [0.1, 0.9 + seed / 100],
            partition=IID,
            strategy=fedprox,
            seed=seed,
            num_rounds=None if seed == 0 else 50,
            finished=seed == 0,
        )
    md_path, _ = write_report(load_runs([runs]), tmp_path / "report")
    section = md_path.read_text().split("### Strategies: rounds to target by partition")[1]
    rounds_table, wall_table = section.split("Wall time of one run")
    rows = {
        cells[0]: cells[1:]
        for line in rounds_table.splitlines()
        if line.startswith("| fed")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert "| strategy | iid | pathological |" in section
    assert rows["fedavg"] == ["32.0 ± 2.8 (2/2)", "110.0 ± 14.1 (2/2)"]
    assert rows["fedprox(proximal_mu=0.1)"] == [
        "— (0/2, 1 unfinished; best 91.00%)",
        "93.0 ± 4.2 (2/2)",
    ]
    assert "| fedavg | 0.2 | 0.2 |" in wall_table  # each fake run's 12.5 s, in minutes

    out = tmp_path / "figures" / "strategies"
    assert comparison.main([str(runs), "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    seed_0 = [str(p) for p in runs.iterdir() if p.name.endswith("_0")]  # one seed a group
    assert comparison.main([*seed_0, "--out", str(out)]) == 0
    only_fedavg = [p for p in runs.iterdir() if p.name.startswith("fedavg")]
    assert comparison.main([str(p) for p in only_fedavg]) == 2


def _sections(markdown: str) -> dict[str, list[str]]:
    """Each heading of a markdown file with the non-blank lines under it."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            lines = sections.setdefault(line, [])
        elif line.strip():
            lines.append(line)
    return sections


def test_the_results_page_shows_the_saved_report_tables() -> None:
    """docs/results.md's paper tables are the committed report's, word for word."""
    report = _sections((PROJECT_ROOT / "docs" / "runs" / "table.md").read_text())
    page = _sections((PROJECT_ROOT / "docs" / "results.md").read_text())
    tables = [heading for heading in report if heading.lstrip("#").strip().startswith("Table")]
    assert len(tables) == 8  # four paper tables, and the per-cell table of each
    for heading in tables:
        assert page.get(heading) == report[heading], heading
