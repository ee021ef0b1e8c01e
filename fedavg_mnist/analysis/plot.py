"""Test accuracy against communication round for several saved runs, on one figure.

    python -m fedavg_mnist.analysis.plot <run or multirun dirs / results.json ...> [--out STEM]
        [--best-lr] [--by-partition] [--linear-x]

Draws each run's best-so-far test accuracy (the curves the paper reads) on a log-scale
round axis with the target line, and saves `STEM.png` and `STEM.pdf`. `--best-lr` keeps
one run per setting, the one with the best learning rate; `--by-partition` draws IID and
non-IID side by side, one curve per method, as the paper's Figure 2.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedavg_mnist.analysis.figures import figure_paths, partition_name, plot_accuracy
from fedavg_mnist.analysis.saved_runs import best_runs, default_output_dir, find_results, load_runs
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import load_results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: plot the runs below the given paths."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.analysis.plot", description=__doc__
    )
    parser.add_argument("paths", nargs="+", help="run/multirun directories or results.json files")
    parser.add_argument(
        "--out", type=Path, help="output path without suffix (default: <first dir>/accuracy_curves)"
    )
    parser.add_argument("--linear-x", action="store_true", help="linear round axis")
    parser.add_argument("--best-lr", action="store_true", help="one run per setting: best η")
    parser.add_argument("--by-partition", action="store_true", help="IID and non-IID panels")
    args = parser.parse_args(argv)
    try:
        if args.best_lr:
            best = best_runs(load_runs(args.paths))
            settings = sorted(best, key=lambda s: (s.partition, s.local_epochs, s.batch_size or 0))
            paths_found = [best[setting].best.path for setting in settings]
        else:
            paths_found = find_results(args.paths)
        documents = [load_results(path) for path in paths_found]
        panels: dict[str, list[dict[str, Any]]] | None = None
        if args.by_partition:
            panels = {}
            for document in documents:
                panels.setdefault(partition_name(document), []).append(document)
        stem = args.out or default_output_dir(args.paths) / "accuracy_curves"
        paths = figure_paths(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        plot_accuracy(documents, paths, log_x=not args.linear_x, panels=panels)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(documents)} runs; wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
