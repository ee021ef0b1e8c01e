"""A queue file of long runs, and its state read from the run directories themselves.

The queue file names cells (a run directory under `runs_dir` and the CLI's overrides for
it); each cell is `done` (finished results), `started` (a checkpoint to resume) or `left`,
and `running` while the queue runs it (`campaign.lock` names the running cells).
"""

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedavg_mnist.checkpoint import CHECKPOINT_FILE
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import RESULTS_FILE, ROUNDS_FILE, load_results

LOCK_FILE = "campaign.lock"  # in the runs directory: the pid running the queue, and its cells
STATUS_FILE = "STATUS.md"
DONE, STARTED, LEFT, RUNNING = "done", "started", "left", "running"


@dataclass(frozen=True)
class QueuedRun:
    """One queued run: its directory (under the queue's `runs_dir`) and its CLI overrides."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Queue:
    """The cells of a queue file, in order, and where their run directories live."""

    runs_dir: Path
    common: tuple[str, ...]
    cells: tuple[QueuedRun, ...]

    def run_dir(self, cell: QueuedRun) -> Path:
        """Return the cell's run directory."""
        return self.runs_dir / cell.name


def load_queue(path: Path) -> Queue:
    """Read a queue file: `runs_dir`, `common` overrides and `cells` (name, overrides)."""
    try:
        spec: Any = OmegaConf.to_container(OmegaConf.load(path))
        cells = tuple(
            QueuedRun(str(c["name"]), tuple(map(str, c["overrides"]))) for c in spec["cells"]
        )
        queue = Queue(Path(spec["runs_dir"]), tuple(map(str, spec.get("common", []))), cells)
    except (OSError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the queue {path}: {err}") from err
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise UserError(f"queue {path}: a cell name appears twice")
    return queue


def cell_state(run_dir: Path) -> str:
    """`done` (results finished), `started` (a checkpoint to resume) or `left`."""
    if (run_dir / RESULTS_FILE).is_file() and load_results(run_dir).get("finished"):
        return DONE
    return STARTED if (run_dir / CHECKPOINT_FILE).is_file() else LEFT


def select_cells(queue: Queue, patterns: Sequence[str]) -> list[QueuedRun]:
    """Return the cells matching `patterns` (shell-style), in the patterns' order; all if none."""
    if not patterns:
        return list(queue.cells)
    selected: list[QueuedRun] = []
    for pattern in patterns:
        matches = [c for c in queue.cells if fnmatch.fnmatchcase(c.name, pattern)]
        if not matches:
            raise UserError(f"no cell of the queue matches {pattern!r}")
        selected += [cell for cell in matches if cell not in selected]
    return selected


def running_cells(queue: Queue) -> tuple[int, list[str]] | None:
    """Return (pid, names of its running cells) of the live process running this queue."""
    try:
        pid_text, *names = (queue.runs_dir / LOCK_FILE).read_text().split()
        pid = int(pid_text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid, names


def status_rows(queue: Queue) -> list[dict[str, Any]]:
    """One row per cell: its state, rounds done and best accuracy so far."""
    running = running_cells(queue)
    rows = []
    for cell in queue.cells:
        run_dir = queue.run_dir(cell)
        state = cell_state(run_dir)
        if running and cell.name in running[1]:
            state = RUNNING
        row: dict[str, Any] = {"cell": cell.name, "state": state, "rounds": 0, "best": None}
        if (run_dir / RESULTS_FILE).is_file():
            results = load_results(run_dir)
            row.update(
                rounds=results.get("completed_rounds", 0),
                best=results.get("best_accuracy"),
                to_target=results.get("first_round_at_target"),
                wall_seconds=results.get("wall_seconds"),
            )
        rows.append(row)
    return rows


def status_markdown(queue: Queue) -> str:
    """Return the queue's state as a Markdown table."""
    lines = [
        "| cell | state | rounds | best accuracy | first round at target | wall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in status_rows(queue):
        best = "" if row["best"] is None else f"{row['best']:.4f}"
        target = row.get("to_target") or ""
        wall = f"{row['wall_seconds'] / 3600:.2f} h" if row.get("wall_seconds") else ""
        lines.append(
            f"| {row['cell']} | {row['state']} | {row['rounds']} | {best} | {target} | {wall} |"
        )
    return "\n".join(lines) + "\n"


def rounds_logged(run_dir: Path) -> int:
    """Count the rounds a cell's run has logged, over all its starts."""
    try:
        with open(run_dir / ROUNDS_FILE, "rb") as stream:
            return sum(1 for _ in stream)
    except FileNotFoundError:
        return 0
