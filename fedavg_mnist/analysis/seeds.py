"""Runs that differ only in their seed, summarized: rounds to target with a 95% interval.

A rounds-to-target number from one seed cannot say whether 17 beats 20: the same cell moves by
a few rounds from seed to seed (and from machine to machine). Runs of one setting and one
learning rate are a seed group; this module gives each group's mean, standard deviation,
range and 95% confidence interval of rounds to target (Student's t over the seeds that reached
it), how many seeds reached it, and the final accuracy's mean and standard deviation.
"""

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedavg_mnist.analysis.saved_runs import REACHED, UNFINISHED, Run, Setting
from fedavg_mnist.analysis.tables import md_row

# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
    25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip


def t_quantile(degrees_of_freedom: int) -> float:
    """Return t(0.975, df): the half-width of a 95% interval in standard errors."""
    return T_975.get(degrees_of_freedom, 1.96)


@dataclass(frozen=True)
class SeedGroup:
    """The runs of one setting and learning rate, one per seed."""

    setting: Setting
    lr: float
    runs: tuple[Run, ...]

    @property
    def seeds(self) -> list[int]:
        """The seeds run, ascending."""
        return sorted(run.seed for run in self.runs)

    @property
    def rounds(self) -> list[float]:
        """Rounds to target of the seeds that reached it."""
        return [run.rounds_to_target for run in self.runs if run.rounds_to_target is not None]

    @property
    def reached(self) -> int:
        """How many seeds reached the target."""
        return sum(run.status == REACHED for run in self.runs)

    @property
    def unfinished(self) -> int:
        """How many seeds stopped early without reaching the target."""
        return sum(run.status == UNFINISHED for run in self.runs)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean rounds to target (two seeds or more)."""
        rounds = self.rounds
        if len(rounds) < 2:
            return None
        half = t_quantile(len(rounds) - 1) * statistics.stdev(rounds) / math.sqrt(len(rounds))
        mean = statistics.fmean(rounds)
        return mean - half, mean + half

    @property
    def final_accuracies(self) -> list[float]:
        """Each seed's accuracy after its last round."""
        return [run.final_accuracy for run in self.runs if run.final_accuracy is not None]


def seed_groups(runs: Iterable[Run], min_seeds: int = 2) -> list[SeedGroup]:
    """Group runs by (setting, learning rate); keep the groups of `min_seeds` seeds or more."""
    groups: dict[tuple[Setting, float], dict[int, Run]] = {}
    for run in runs:
        groups.setdefault((run.setting, run.lr), {})[run.seed] = run
    return [
        SeedGroup(setting, lr, tuple(by_seed[seed] for seed in sorted(by_seed)))
        for (setting, lr), by_seed in sorted(groups.items(), key=lambda item: repr(item[0]))
        if len(by_seed) >= min_seeds
    ]


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def seeds_markdown(groups: Iterable[SeedGroup], paper_rounds: Mapping[Setting, int]) -> str:
    """One row per seed group: rounds to target with spread and interval, beside the paper's."""
    header = [
        "setting",
        "η",
        "seeds",
        "reached",
        "rounds: mean ± std",
        "min–max",
        "95% CI",
        "paper",
        "paper in CI",
        "final accuracy",
    ]
    lines = [
        "### Seeds: rounds to target over seeds",
        "",
        md_row(header),
        md_row(["---"] * len(header)),
    ]
    for group in groups:
        setting, rounds, interval = group.setting, group.rounds, group.interval
        paper = paper_rounds.get(setting)
        inside = ""
        if paper is not None and interval is not None:
            inside = "yes" if interval[0] <= paper <= interval[1] else "no"
        reached = f"{group.reached} of {len(group.runs)}"
        if group.unfinished:
            reached += f" ({group.unfinished} unfinished)"
        lines.append(
            md_row(
                [
                    setting_text(setting),
                    f"{group.lr:g}",
                    ", ".join(map(str, group.seeds)),
                    reached,
                    _mean_std(rounds, 1),
                    f"{min(rounds):.1f}–{max(rounds):.1f}" if rounds else "—",
                    f"{interval[0]:.1f}–{interval[1]:.1f}" if interval else "—",
                    str(paper) if paper is not None else "",
                    inside,
                    _mean_std([100 * a for a in group.final_accuracies], 2) + " %",
                ]
            )
        )
    return "\n".join(lines) + "\n"


def setting_text(setting: Setting) -> str:
    """Return a setting in a few words: model, strategy, partition, K, C, E, B."""
    batch = "∞" if setting.batch_size is None else str(setting.batch_size)
    return (
        f"{setting.model} {setting.strategy} {setting.partition} K={setting.num_clients} "
        f"C={setting.client_fraction:g} E={setting.local_epochs} B={batch}"
    )
