"""Each round's clients and their local training loss: one run, read from its results.

    python -m fedavg_mnist.analysis.client_losses <run dir or results.json> [--out client_losses]

Every sampled client of every round is a point (its mean local training loss over its E
epochs; the last epoch's where recorded is drawn as a second mark), with the round's mean
over its clients as a line: where non-IID clients pull apart, the points spread. Writes
`<out>.png` and `<out>.pdf`.
"""

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedavg_mnist.analysis.figures import figure_paths, run_label, save_figure
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import load_results


def client_losses(document: dict[str, Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Return (round, its clients' records) for every round that recorded its clients."""
    return [(r["round"], r["clients"]) for r in document["history"] if r.get("clients")]


def draw_client_losses(document: dict[str, Any], paths: Sequence[Path]) -> None:
    """Draw the run's client losses per round; save the figure to each path."""
    from matplotlib.figure import Figure

    rounds = client_losses(document)
    if not rounds:
        raise UserError("the run recorded no client metrics (runs before this version did not)")
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    xs = [r for r, clients in rounds for _ in clients]
    ax.scatter(xs, [c["train_loss"] for _, cs in rounds for c in cs], s=6, alpha=0.5,
               label="a client's mean local loss (all E epochs)")  # fmt: skip
    last = [(r, c["train_loss_last_epoch"]) for r, cs in rounds for c in cs]
    last = [(r, loss) for r, loss in last if loss is not None]
    if last:
        last_rounds, last_losses = [r for r, _ in last], [loss for _, loss in last]
        ax.scatter(last_rounds, last_losses, s=6, marker="x", alpha=0.4,
                   label="its last epoch's loss")  # fmt: skip
    means = [statistics.fmean(c["train_loss"] for c in cs) for _, cs in rounds]
    ax.plot([r for r, _ in rounds], means, color="black", linewidth=1, label="mean over clients")
    ax.set_yscale("log")
    ax.set_xlabel("communication round")
    ax.set_ylabel("local training loss (cross-entropy)")
    ax.set_title(f"Clients' local training loss per round: {run_label(document)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    save_figure(fig, paths)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: draw one run's client losses."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.analysis.client_losses", description=__doc__
    )
    parser.add_argument("run", type=Path, help="a run directory or its results.json")
    parser.add_argument(
        "--out", type=Path, help="path without suffix (default: <run>/client_losses)"
    )
    args = parser.parse_args(argv)
    run_dir = args.run if args.run.is_dir() else args.run.parent
    stem = args.out or run_dir / "client_losses"
    paths = figure_paths(stem)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        draw_client_losses(load_results(args.run), paths)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
