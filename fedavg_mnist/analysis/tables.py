"""The paper's tables filled with our runs: Markdown and CSV, ours beside the paper's."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fedavg_mnist.analysis.paper import (
    TARGET_ACCURACY,
    Cell,
    PaperTable,
)
from fedavg_mnist.analysis.saved_runs import (
    BEATEN_AFTER,
    NOT_REACHED,
    NOT_RUN,
    REACHED,
    RateChoice,
    Run,
    Setting,
)

CSV_FIELDS = (
    "table",
    "row",
    "column",
    "model",
    "partition",
    "client_fraction",
    "local_epochs",
    "batch_size",
    "status",
    "rounds_to_target",
    "speedup",
    "paper_rounds",
    "paper_speedup",
    "ratio_to_paper",
    "lr",
    "lr_established",
    "lrs_tried",
    "lrs_finished",
    "lrs_unsettled",
    "best_accuracy",
    "final_accuracy",
    "completed_rounds",
    "num_rounds",
    "wall_seconds",
    "machine",
    "results",
)


def cell_setting(cell: Cell) -> Setting:
    """Return the setting a paper cell describes (K=100, the model's target)."""
    return Setting(
        model=cell.model,
        partition=cell.partition,
        num_clients=100,
        client_fraction=cell.client_fraction,
        local_epochs=cell.local_epochs,
        batch_size=cell.batch_size,
        target_accuracy=TARGET_ACCURACY[cell.model],
    )


@dataclass(frozen=True)
class CellResult:
    """A table cell: our best run (if any) beside the paper's number."""

    table: PaperTable
    cell: Cell
    choice: RateChoice | None
    speedup: float | None
    paper_speedup: float | None

    @property
    def run(self) -> Run | None:
        """The run at the best learning rate tried."""
        return self.choice.best if self.choice else None

    @property
    def lrs_tried(self) -> list[float]:
        """Every learning rate tried for this cell."""
        return self.choice.lrs_tried if self.choice else []

    @property
    def status(self) -> str:
        """`reached`, `not reached`, `unfinished` or `not run`."""
        return self.run.status if self.run else NOT_RUN

    @property
    def is_reference(self) -> bool:
        """Whether this cell is its column's baseline row (speed-ups are relative to it)."""
        return self.cell.row == self.table.baseline_row

    @property
    def rounds(self) -> float | None:
        """Our interpolated rounds to target."""
        return self.run.rounds_to_target if self.run else None

    @property
    def ratio_to_paper(self) -> float | None:
        """Our rounds divided by the paper's."""
        if self.rounds is None or not self.cell.paper_rounds:
            return None
        return self.rounds / self.cell.paper_rounds


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def table_results(table: PaperTable, best: dict[Setting, RateChoice]) -> list[CellResult]:
    """Fill every cell of `table` from the best runs; missing ones stay `not run`."""
    chosen = {cell: best.get(cell_setting(cell)) for cell in table.cells}
    results = []
    for cell, choice in chosen.items():
        reference = table.cell(table.baseline_row, cell.column)
        reference_choice = chosen[reference]
        ours_reference = reference_choice.best.rounds_to_target if reference_choice else None
        run = choice.best if choice else None
        results.append(
            CellResult(
                table=table,
                cell=cell,
                choice=choice,
                speedup=_ratio(ours_reference, run.rounds_to_target if run else None),
                paper_speedup=_ratio(reference.paper_rounds, cell.paper_rounds),
            )
        )
    return results


def rounds_text(
    rounds: float | None, speedup: float | None, show_speedup: bool, digits: int = 0
) -> str:
    """Return rounds as a table cell, with the speed-up `(n×)` when shown; `—` when none."""
    text = f"{rounds:.{digits}f}" if rounds is not None else "—"
    if show_speedup and speedup is not None:
        text += f" ({speedup:.1f}×)"
    return text


def ours_text(result: CellResult) -> str:
    """Markdown text of our cell: rounds (speed-up), or why there is no number."""
    run = result.run
    if run is None:
        return "not run"
    if run.status == REACHED:
        return rounds_text(run.rounds_to_target, result.speedup, not result.is_reference)
    if run.best_accuracy is None:  # a queued cell that has begun: only round 0 evaluated
        return "started, no round yet"
    best = f"{run.best_accuracy:.2%}"
    if run.status == NOT_REACHED:
        return f"— (best {best} in {run.completed_rounds})"
    return f"unfinished (best {best} after {run.completed_rounds})"


def markdown_table(results: Sequence[CellResult]) -> str:
    """One paper table: ours, the paper's and their ratio per column; then the η used."""
    table = results[0].table
    by_position = {(r.cell.row, r.cell.column): r for r in results}
    header = [table.row_header]
    for column in table.columns:
        header += [f"{column}: ours", "paper", "ours/paper"]
    lines = [f"### {table.title}", "", md_row(header), md_row(["---"] * len(header))]
    for row in table.rows:
        cells = [row]
        for column in table.columns:
            result = by_position[(row, column)]
            ratio = result.ratio_to_paper
            cells += [
                ours_text(result),
                rounds_text(
                    result.cell.paper_rounds, result.paper_speedup, not result.is_reference
                ),
                f"{ratio:.2f}" if ratio is not None else "",
            ]
        lines.append(md_row(cells))
    lines += ["", "Learning rate η of each cell, " + RATE_LEGEND, ""]
    lines += [
        md_row([table.row_header, *table.columns]),
        md_row(["---"] * (1 + len(table.columns))),
    ]
    for row in table.rows:
        cells = [row]
        for column in table.columns:
            cells.append(rate_text(by_position[(row, column)].choice))
        lines.append(md_row(cells))
    return "\n".join(lines) + "\n"


RATE_LEGEND = (
    "the best of the values tried: (best of n, k run to the end); †: not established, "
    "another rate tried was stopped before it reached the target or ran "
    f"{BEATEN_AFTER:g}× the best rate's rounds (listed after †):"
)


def rate_text(choice: RateChoice | None) -> str:
    """Return the η cell: the best rate, how many were tried and finished, any unsettled."""
    if choice is None:
        return ""
    text = f"{choice.best.lr:g}"
    tried, finished = len(choice.lrs_tried), len(choice.lrs_finished)
    if tried > 1:
        text += f" (best of {tried}, {finished} run to the end)"
    if not choice.established:
        text += " † " + ", ".join(f"{lr:g}" for lr in choice.lrs_unsettled)
    return text


def md_row(cells: Sequence[str]) -> str:
    """Return one Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def number_text(value: float | None, digits: int = 1) -> str:
    """Return a number with `digits` decimals, or nothing."""
    return "" if value is None else f"{value:.{digits}f}"


def _rates(rates: list[float]) -> str:
    return " ".join(f"{lr:g}" for lr in rates)


def _established_text(choice: RateChoice | None) -> str:
    return "" if choice is None else str(choice.established).lower()


def csv_rows(results: Iterable[CellResult]) -> list[dict[str, Any]]:
    """Rows of `table.csv`: one per cell, run or not."""
    rows = []
    for result in results:
        cell, run = result.cell, result.run
        rows.append(
            {
                "table": result.table.name,
                "row": cell.row,
                "column": cell.column,
                "model": cell.model,
                "partition": cell.partition,
                "client_fraction": cell.client_fraction,
                "local_epochs": cell.local_epochs,
                "batch_size": "inf"
                if cell.batch_size is None
                else cell.batch_size,  # CSV: a number
                "status": result.status,
                "rounds_to_target": number_text(result.rounds),
                "speedup": number_text(result.speedup, 2),
                "paper_rounds": cell.paper_rounds if cell.paper_rounds is not None else "",
                "paper_speedup": number_text(result.paper_speedup, 2),
                "ratio_to_paper": number_text(result.ratio_to_paper, 2),
                "lr": f"{run.lr:g}" if run else "",
                "lr_established": _established_text(result.choice),
                "lrs_tried": " ".join(f"{lr:g}" for lr in result.lrs_tried),
                "lrs_finished": _rates(result.choice.lrs_finished if result.choice else []),
                "lrs_unsettled": _rates(result.choice.lrs_unsettled if result.choice else []),
                "best_accuracy": number_text(run.best_accuracy, 4) if run else "",
                "final_accuracy": number_text(run.final_accuracy, 4) if run else "",
                "completed_rounds": run.completed_rounds if run else "",
                "num_rounds": run.num_rounds if run else "",
                "wall_seconds": number_text(run.wall_seconds) if run else "",
                "machine": run.machine if run else "",
                "results": str(run.path) if run else "",
            }
        )
    return rows


def run_cells_markdown(tables: Sequence[Sequence[CellResult]]) -> str:
    """Every cell with a run, per table: rounds (one decimal), η, rounds run, wall time, machine."""
    header = ["cell", "ours: rounds to target", "paper", "ours/paper", "η", "rounds run"]
    header += ["wall time", "machine", "status"]
    lines = ["### Every run cell: learning rate, rounds run, wall time, machine", ""]
    for results in tables:
        table = results[0].table
        lines += [f"#### {table.title.split(':')[0]}", "", md_row(header)]
        lines.append(md_row(["---"] * len(header)))
        for result in results:
            cell, run = result.cell, result.run
            if run is None:
                continue
            row = cell.row if table.row_header == "method" else f"{table.row_header}={cell.row}"
            show_speedup = not result.is_reference
            ratio = result.ratio_to_paper
            lines.append(
                md_row(
                    [
                        f"{cell.column}, {row}",
                        rounds_text(result.rounds, result.speedup, show_speedup, digits=1),
                        rounds_text(cell.paper_rounds, result.paper_speedup, show_speedup),
                        f"{ratio:.2f}" if ratio is not None else "",
                        f"{run.lr:g}",
                        str(run.completed_rounds),
                        f"{run.wall_seconds / 60:.1f} min",
                        run.machine,
                        run.status,
                    ]
                )
            )
        lines.append("")
    return "\n".join(lines)
