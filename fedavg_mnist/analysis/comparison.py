"""Strategies side by side: rounds to target by strategy and partition, over seeds.

    python -m fedavg_mnist.analysis.comparison <dirs or results.json ...> [--out STEM]

Runs that differ only in their strategy, partition and seed are one comparison (each
strategy samples the same clients per (seed, round), so the runs of one seed are paired).
Each (strategy, partition) is a seed group (`analysis.seeds`): its mean rounds to target
over the seeds that reached it, and how many did. `report` prints the table; this command
draws the figure, one bar per strategy in each partition's group, with the 95% interval of
the mean, and writes `<STEM>.png` and `<STEM>.pdf`.
"""

import argparse
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedavg_mnist.analysis.figures import figure_paths, save_figure
from fedavg_mnist.analysis.saved_runs import Setting, load_runs
from fedavg_mnist.analysis.seeds import SeedGroup, seed_groups
from fedavg_mnist.analysis.tables import md_row
from fedavg_mnist.config import PARTITIONS, STRATEGY_NAMES
from fedavg_mnist.errors import UserError


def comparison_groups(groups: Iterable[SeedGroup]) -> list[SeedGroup]:
    """Keep the seed groups of one comparison: two strategies or more on shared settings.

    The shared settings are those of the groups beside the most common ones (model, K, C, E,
    B and target); none is returned when fewer than two strategies ran them.
    """
    groups = list(groups)
    if not groups:
        return []
    shared = statistics.mode(_shared(group.setting) for group in groups)
    kept = [group for group in groups if _shared(group.setting) == shared]
    return kept if len({group.setting.strategy for group in kept}) >= 2 else []


def _shared(setting: Setting) -> tuple[object, ...]:
    return (
        setting.model,
        setting.num_clients,
        setting.client_fraction,
        setting.local_epochs,
        setting.batch_size,
        setting.target_accuracy,
    )


def _in_order(labels: Iterable[str], names: Sequence[str]) -> list[str]:
    """Return the distinct labels in the order of their names in `names`, then by settings."""

    def rank(label: str) -> tuple[int, str]:
        name = label.split("(")[0]
        return (names.index(name) if name in names else len(names), label)

    return sorted(set(labels), key=rank)


def _strategies(groups: Iterable[SeedGroup]) -> list[str]:
    paper_first = ("fedavg", *sorted(set(STRATEGY_NAMES) - {"fedavg"}))
    return _in_order((group.setting.strategy for group in groups), paper_first)


def _partitions(groups: Iterable[SeedGroup]) -> list[str]:
    return _in_order((group.setting.partition for group in groups), PARTITIONS)


def cell_text(group: SeedGroup | None) -> str:
    """Mean ± std of rounds to target, with how many seeds reached it (and best if none did)."""
    if group is None:
        return "not run"
    rounds, total = group.rounds, len(group.runs)
    counted = f"{group.reached}/{total}"
    if group.unfinished:
        counted += f", {group.unfinished} unfinished"
    if not rounds:
        best = max((run.best_accuracy or 0.0) for run in group.runs)
        return f"— ({counted}; best {best:.2%})"
    mean = statistics.fmean(rounds)
    spread = f" ± {statistics.stdev(rounds):.1f}" if len(rounds) > 1 else ""
    return f"{mean:.1f}{spread} ({counted})"


def comparison_markdown(groups: Sequence[SeedGroup]) -> str:
    """One row per strategy, one column per partition: rounds to target over seeds."""
    if not groups:
        return ""
    strategies, partitions = _strategies(groups), _partitions(groups)
    by_cell = {(g.setting.strategy, g.setting.partition): g for g in groups}
    setting = groups[0].setting
    batch = "∞" if setting.batch_size is None else str(setting.batch_size)
    lines = [
        "### Strategies: rounds to target by partition",
        "",
        f"{setting.model}, K={setting.num_clients}, C={setting.client_fraction:g}, "
        f"E={setting.local_epochs}, B={batch}, target {setting.target_accuracy:.0%}; "
        "mean ± std over the seeds that reached the target (reached/seeds run); η: "
        + ", ".join(sorted({f"{group.lr:g}" for group in groups}))
        + ".",
        "",
        md_row(["strategy", *partitions]),
        md_row(["---"] * (len(partitions) + 1)),
    ]
    for strategy in strategies:
        cells = [cell_text(by_cell.get((strategy, partition))) for partition in partitions]
        lines.append(md_row([strategy, *cells]))
    lines += [
        "",
        "Wall time of one run (mean over its seeds, minutes; each run stops at the target):",
        "",
        md_row(["strategy", *partitions]),
        md_row(["---"] * (len(partitions) + 1)),
    ]
    for strategy in strategies:
        cells = [wall_text(by_cell.get((strategy, partition))) for partition in partitions]
        lines.append(md_row([strategy, *cells]))
    return "\n".join(lines) + "\n"


def wall_text(group: SeedGroup | None) -> str:
    """Mean wall time of the group's runs, in minutes."""
    if group is None:
        return ""
    return f"{statistics.fmean(run.wall_seconds for run in group.runs) / 60:.1f}"


def draw_comparison(groups: Sequence[SeedGroup], paths: Sequence[Path]) -> None:
    """Bars of mean rounds to target, strategies side by side in each partition's group.

    Error bars: the 95% interval of the mean (two seeds or more that reached the target); a
    hatched bar at the round cap marks a strategy none of whose seeds reached it.
    """
    import matplotlib
    from matplotlib.figure import Figure

    strategies, partitions = _strategies(groups), _partitions(groups)
    by_cell = {(g.setting.strategy, g.setting.partition): g for g in groups}
    width = 0.8 / len(strategies)
    palette = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(max(7.0, 2.6 * len(partitions)), 6.0))
    ax = fig.subplots()
    for index, strategy in enumerate(strategies):
        for column, partition in enumerate(partitions):
            group = by_cell.get((strategy, partition))
            if group is None:
                continue
            x = column + (index - (len(strategies) - 1) / 2) * width
            label = strategy if column == 0 else None
            if not group.rounds:
                cap = max(run.num_rounds for run in group.runs)
                ax.bar(x, cap, width, color="none", edgecolor=palette(index), hatch="//")
                ax.bar(x, 0, width, color=palette(index), label=label)
                continue
            mean = statistics.fmean(group.rounds)
            interval = group.interval
            error = None if interval is None else [[mean - interval[0]], [interval[1] - mean]]
            ax.bar(x, mean, width, color=palette(index), label=label, yerr=error, capsize=2)
    ax.set_xticks(range(len(partitions)))
    ax.set_xticklabels(partitions)
    ax.set_ylabel("rounds to target (mean over seeds)")
    setting = groups[0].setting
    ax.set_title(
        f"{setting.model}, C={setting.client_fraction:g}, E={setting.local_epochs}, "
        f"B={setting.batch_size or '∞'}: rounds to {setting.target_accuracy:.0%} "
        "(bars: 95% interval; hatched: no seed reached it)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    save_figure(fig, paths)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: draw the comparison of the runs below the given paths."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.analysis.comparison", description=__doc__
    )
    parser.add_argument("paths", nargs="+", help="run directories or results.json files")
    parser.add_argument("--out", type=Path, default=Path("strategies"), help="path, no suffix")
    args = parser.parse_args(argv)
    try:
        groups = comparison_groups(seed_groups(load_runs(args.paths), min_seeds=1))
        if not groups:
            raise UserError("no comparison: the runs hold fewer than two strategies")
        paths = figure_paths(args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw_comparison(groups, paths)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(groups)} strategy-partition groups; wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
