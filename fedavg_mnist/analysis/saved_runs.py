"""Saved runs: found below folders, read from `results.json`, grouped by setting.

A setting is what makes two runs the same experiment, learning rate aside; among the runs
of a setting the best learning rate is the one with the fewest rounds to target, and it is
established only where every other rate tried lost by the rule of `RateChoice`.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedavg_mnist.config import partition_label, strategy_label
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import RESULTS_FILE, load_results, partition_name
from fedavg_mnist.rounds_to_target import rounds_to_target

REACHED = "reached"
NOT_REACHED = "not reached"  # the run ended below its target
UNFINISHED = "unfinished"  # the run stopped early without reaching its target
NOT_RUN = "not run"


@dataclass(frozen=True)
class Setting:
    """What makes two runs the same configuration, learning rate aside."""

    model: str
    partition: str
    num_clients: int
    client_fraction: float
    local_epochs: int
    batch_size: int | None
    target_accuracy: float
    normalize: bool = True  # standardized pixels (the default), or raw [0, 1]
    init: str = "pytorch"  # initial weights (`model.init`)
    strategy: str = "fedavg"  # the server's strategy and its settings (`strategy_label`)


UNRECORDED_MACHINE = "2-core CPU (not recorded)"  # runs from before results named machines


def machine_text(machines: list[dict[str, Any]] | None) -> str:
    """Name the machines a run's sessions ran on: the GPU, else the CPU and its cores."""
    if not machines:
        return UNRECORDED_MACHINE
    names = [m.get("gpu") or f"{m.get('cpu')} ({m.get('cores')} cores)" for m in machines]
    return " + ".join(dict.fromkeys(names))


@dataclass(frozen=True)
class Run:
    """One saved run, reduced to what the tables need."""

    path: Path
    setting: Setting
    lr: float
    status: str
    rounds_to_target: float | None
    best_accuracy: float | None
    final_accuracy: float | None
    completed_rounds: int
    num_rounds: int
    wall_seconds: float
    machine: str = UNRECORDED_MACHINE  # where its rounds ran, as `results.json` records it
    seed: int = 0

    @classmethod
    def from_document(cls, path: Path, document: dict[str, Any]) -> "Run":
        """Summarize one `results.json` document."""
        try:
            cfg = document["config"]
            setting = Setting(
                model=cfg["model"]["name"],
                partition=partition_label(cfg, partition_name(cfg)),
                num_clients=int(cfg["num_clients"]),
                client_fraction=float(cfg["client_fraction"]),
                local_epochs=int(cfg["local_epochs"]),
                batch_size=cfg["batch_size"],
                target_accuracy=float(document["target_accuracy"]),
                normalize=bool(cfg.get("dataset", {}).get("normalize", True)),
                init=str(cfg["model"].get("init", "pytorch")),
                strategy=strategy_label(cfg.get("strategy"), cfg.get("dp")),
            )
            trained = [r for r in document["history"] if r["round"] >= 0]
            rounds = [int(r["round"]) for r in trained]
            accuracies = [float(r["accuracy"]) for r in trained]
            num_rounds = int(cfg["num_rounds"])
            lr = float(cfg["lr"])
            seed = int(cfg.get("seed", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path} is not a fedavg-mnist results file ({err!r})") from err
        crossing = rounds_to_target(rounds, accuracies, setting.target_accuracy)
        completed = max(rounds, default=0)
        if crossing is not None:
            status = REACHED
        elif document.get("finished") and completed >= num_rounds:
            status = NOT_REACHED
        else:
            status = UNFINISHED
        after_start = [a for r, a in zip(rounds, accuracies, strict=True) if r >= 1]
        return cls(
            path=path,
            setting=setting,
            lr=lr,
            status=status,
            rounds_to_target=crossing,
            best_accuracy=max(after_start, default=None),
            final_accuracy=after_start[-1] if after_start else None,
            completed_rounds=completed,
            num_rounds=num_rounds,
            wall_seconds=float(document.get("wall_seconds", 0.0)),
            machine=machine_text(document.get("machines")),
            seed=seed,
        )


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every `results.json` at or below the given paths, sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(path.rglob(RESULTS_FILE))
        else:
            raise UserError(f"no such file or directory: {path}")
    if not found:
        raise UserError(f"no {RESULTS_FILE} under {', '.join(map(str, paths))}")
    return sorted(found)


def default_output_dir(paths: Sequence[str | Path]) -> Path:
    """Where the commands write by default: the first path, or the folder of a file."""
    first = Path(paths[0])
    return first if first.is_dir() else first.parent


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load and summarize every run below `paths`."""
    return [Run.from_document(path, load_results(path)) for path in find_results(paths)]


# A rate that has not reached the target after this many times the winner's rounds is beaten.
BEATEN_AFTER = 1.5


def run_rank(run: Run) -> tuple[int, float, float]:
    """Sort key, best first: reached the target, fewer rounds, then higher final accuracy."""
    rounds = run.rounds_to_target if run.rounds_to_target is not None else math.inf
    return (0 if run.status == REACHED else 1, rounds, -(run.final_accuracy or 0.0))


def is_beaten(run: Run, best: Run) -> bool:
    """Whether `run` lost to `best` by the rule, not merely by being stopped sooner.

    A run is beaten only by one that reached the target sooner, and only if it was itself
    run to the target or for `BEATEN_AFTER` times the winner's rounds without reaching it;
    where no run reached the target, only runs that ran all their rounds are compared.
    """
    if run is best:
        return False
    if best.status == REACHED and best.rounds_to_target is not None:
        return run.status == REACHED or run.completed_rounds >= BEATEN_AFTER * best.rounds_to_target
    return run.status == NOT_REACHED


@dataclass(frozen=True)
class RateChoice:
    """A setting's runs, one per learning rate tried, and the best rate among them."""

    best: Run
    runs: tuple[Run, ...]

    @property
    def lrs_tried(self) -> list[float]:
        """Every learning rate tried, ascending."""
        return sorted(run.lr for run in self.runs)

    @property
    def lrs_finished(self) -> list[float]:
        """The rates run to the target or to their last round."""
        return sorted(run.lr for run in self.runs if run.status != UNFINISHED)

    @property
    def lrs_unsettled(self) -> list[float]:
        """The rates that neither won nor lost by the rule: stopped too soon to compare."""
        return sorted(
            run.lr for run in self.runs if run is not self.best and not is_beaten(run, self.best)
        )

    @property
    def established(self) -> bool:
        """Whether every other rate tried lost to the best by the rule."""
        return not self.lrs_unsettled


def best_runs(runs: Iterable[Run]) -> dict[Setting, RateChoice]:
    """Per setting: the learning rates tried (one run each) and the best of them."""
    groups: dict[Setting, dict[float, Run]] = {}
    # a rate's run of its lowest seed is kept (the best of them, where it was run again):
    # the spread over seeds is `analysis.seeds`', not a choice of the luckiest seed
    for run in sorted(runs, key=lambda run: (run.seed, run_rank(run)), reverse=True):
        groups.setdefault(run.setting, {})[run.lr] = run
    choices = {}
    for setting, by_rate in groups.items():
        ranked = sorted(by_rate.values(), key=run_rank)
        choices[setting] = RateChoice(best=ranked[0], runs=tuple(ranked))
    return choices
