"""Rounds-to-target tables in the paper's layout from saved runs.

    python -m fedavg_mnist.analysis.report <multirun dir> [more dirs or results.json] [--out DIR]

Reads every `results.json` below the given paths, groups runs by configuration, keeps the
best learning rate of each (fewest rounds to target, then best final accuracy), and writes
`table.md` and `table.csv`: our rounds to target (interpolated crossing of the best-so-far
curve), the speed-up versus the table's reference row, and the paper's numbers beside ours.
"""

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedavg_mnist.analysis.comparison import comparison_groups, comparison_markdown
from fedavg_mnist.analysis.paper import PARTITION_NAMES, TABLES, batch_label
from fedavg_mnist.analysis.saved_runs import (
    REACHED,
    RateChoice,
    Run,
    Setting,
    best_runs,
    default_output_dir,
    load_runs,
)
from fedavg_mnist.analysis.seeds import seed_groups, seeds_markdown
from fedavg_mnist.analysis.tables import (
    CSV_FIELDS,
    cell_setting,
    csv_rows,
    markdown_table,
    md_row,
    number_text,
    rounds_text,
    run_cells_markdown,
    table_results,
)
from fedavg_mnist.errors import UserError
from fedavg_mnist.storage import write_text_atomic


def other_runs_markdown(best: dict[Setting, RateChoice]) -> str:
    """List runs that match no paper cell (another K, C, E, B or strategy), best η each."""
    paper_settings = {cell_setting(cell) for table in TABLES for cell in table.cells}
    others = [(s, found) for s, found in best.items() if s not in paper_settings]
    if not others:
        return ""
    header = [
        "model",
        "strategy",
        "partition",
        "K",
        "C",
        "E",
        "B",
        "pixels",
        "init",
        "η",
        "rounds to target",
        "best accuracy",
    ]
    lines = ["### Other configurations", "", md_row(header), md_row(["---"] * len(header))]
    for setting, choice in sorted(others, key=lambda item: repr(item[0])):
        run = choice.best
        lines.append(
            md_row(
                [
                    setting.model,
                    setting.strategy,
                    PARTITION_NAMES.get(setting.partition, setting.partition),
                    str(setting.num_clients),
                    f"{setting.client_fraction:g}",
                    str(setting.local_epochs),
                    batch_label(setting.batch_size),
                    "standardized" if setting.normalize else "[0, 1]",
                    setting.init,
                    f"{run.lr:g}",
                    rounds_text(run.rounds_to_target, None, False)
                    if run.status == REACHED
                    else run.status,
                    number_text(run.best_accuracy, 4),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def build_report(runs: Sequence[Run]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown and CSV rows for every paper table that at least one run falls into."""
    best = best_runs(runs)
    sections, rows, shown = [], [], []
    for table in TABLES:
        results = table_results(table, best)
        if all(result.run is None for result in results):
            continue
        sections.append(markdown_table(results))
        rows += csv_rows(results)
        shown.append(results)
    other = other_runs_markdown(best)
    if other:
        sections.append(other)
    groups = seed_groups(runs)
    if groups:
        paper = {
            cell_setting(cell): cell.paper_rounds
            for table in TABLES
            for cell in table.cells
            if cell.paper_rounds is not None
        }
        sections.append(seeds_markdown(groups, paper))
    comparison = comparison_markdown(comparison_groups(seed_groups(runs, min_seeds=1)))
    if comparison:
        sections.append(comparison)
    if shown:
        sections.append(run_cells_markdown(shown))
    legend = (
        "Rounds to target: where the best-so-far test accuracy crosses the target, "
        "interpolated between rounds; (n×): speed-up versus the table's first row in the "
        "same column; —: target not reached; ours/paper: our rounds over the paper's.\n"
    )
    markdown = "# Rounds to target\n\n" + legend + "\n" + "\n".join(sections)
    return markdown, rows


def write_report(runs: Sequence[Run], out_dir: Path) -> tuple[Path, Path]:
    """Write `table.md` and `table.csv` under `out_dir`; return their paths."""
    markdown, rows = build_report(runs)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "table.md", out_dir / "table.csv"
    write_text_atomic(md_path, markdown)
    write_text_atomic(csv_path, buffer.getvalue())
    return md_path, csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on the runs below the given paths."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.analysis.report", description=__doc__
    )
    parser.add_argument("paths", nargs="+", help="multirun/run directories or results.json files")
    parser.add_argument("--out", type=Path, help="output folder (default: the first path)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.paths)
        out_dir = args.out or default_output_dir(args.paths)
        md_path, csv_path = write_report(runs, out_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(runs)} runs; wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
