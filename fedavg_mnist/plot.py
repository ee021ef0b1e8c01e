"""Test accuracy against communication round for several saved runs, on one figure.

    python -m fedavg_mnist.plot <run or multirun dirs / results.json ...> [--out STEM]

Draws each run's best-so-far test accuracy (the curves the paper reads) on a log-scale
round axis with the target line, and saves `STEM.png` and `STEM.pdf`.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .figures import plot_accuracy
from .results import load_results
from .runs import default_output_dir, find_results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: plot the runs below the given paths."""
    parser = argparse.ArgumentParser(prog="python -m fedavg_mnist.plot", description=__doc__)
    parser.add_argument("paths", nargs="+", help="run/multirun directories or results.json files")
    parser.add_argument(
        "--out", type=Path, help="output path without suffix (default: <first dir>/accuracy_curves)"
    )
    parser.add_argument("--linear-x", action="store_true", help="linear round axis")
    args = parser.parse_args(argv)
    try:
        documents = [load_results(path) for path in find_results(args.paths)]
        stem = args.out or default_output_dir(args.paths) / "accuracy_curves"
        paths = [stem.with_name(f"{stem.name}.png"), stem.with_name(f"{stem.name}.pdf")]
        stem.parent.mkdir(parents=True, exist_ok=True)
        plot_accuracy(documents, paths, log_x=not args.linear_x)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(documents)} runs; wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
