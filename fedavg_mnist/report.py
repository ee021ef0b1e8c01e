"""Rounds-to-target tables in the paper's layout from saved runs.

    python -m fedavg_mnist.report <multirun dir> [more dirs or results.json] [--out DIR]

Reads every `results.json` below the given paths, groups runs by configuration, keeps the
best learning rate of each (fewest rounds to target, then best final accuracy), and writes
`table.md` and `table.csv`: our rounds to target (interpolated crossing of the best-so-far
curve), the speed-up versus the table's reference row, and the paper's numbers beside ours.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .runs import default_output_dir, load_runs
from .tables import write_report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on the runs below the given paths."""
    parser = argparse.ArgumentParser(prog="python -m fedavg_mnist.report", description=__doc__)
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
