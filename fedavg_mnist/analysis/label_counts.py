"""Every client's label counts as a K x 10 heat map: what a partition gives each client.

    python -m fedavg_mnist.analysis.label_counts partition=dirichlet partition_alpha=0.1 \
        [num_clients=100] [seed=0] [--out label_counts]

The settings are the CLI's (Hydra overrides); the partition is the one a run with them
trains on, drawn by the same function (`partitions.client_partitions`) from MNIST's labels.
Writes `<out>.png` and `<out>.pdf`.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedavg_mnist.analysis.figures import figure_paths, save_figure
from fedavg_mnist.config import RunConfig, partition_label
from fedavg_mnist.errors import UserError
from fedavg_mnist.mnist import read_train_labels
from fedavg_mnist.partitions import client_partitions

NUM_LABELS = 10


def label_counts(config: RunConfig) -> np.ndarray:
    """Return a (K, 10) array: how many examples of each label each client holds."""
    labels = read_train_labels(
        config.dataset.root, config.dataset.download, config.dataset.verify_checksums
    )
    parts = client_partitions(config)
    return np.stack([np.bincount(labels[part], minlength=NUM_LABELS) for part in parts])


def figure_size(counts: np.ndarray) -> tuple[float, float]:
    """Width and height in inches: taller with more clients, within a page."""
    return 7.0, min(max(3.0, 0.09 * counts.shape[0] + 1.5), 14.0)


def plot_label_counts(ax: Any, counts: np.ndarray, title: str) -> None:
    """Draw `counts` on `ax` as a heat map, clients down, labels across, with a colour bar."""
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(NUM_LABELS))
    ax.set_xlabel("label (digit)")
    ax.set_ylabel(f"client (partition ID, K={counts.shape[0]})")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, label="training examples")


def draw_label_counts(counts: np.ndarray, title: str, paths: Sequence[Path]) -> None:
    """Draw `counts` as a heat map (`plot_label_counts`) and save it to each path."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figure_size(counts))
    plot_label_counts(fig.subplots(), counts, title)
    save_figure(fig, paths)


def figure_title(config: RunConfig, counts: np.ndarray) -> str:
    """Name the partition, K, the seed, and the spread of sizes and labels per client."""
    sizes = counts.sum(axis=1)
    held = (counts > 0).sum(axis=1)
    return (
        "MNIST training labels per client\n"
        f"{partition_label(config.record(), config.partition)}, "
        f"K={config.num_clients}, seed={config.seed}\n"
        f"examples per client {sizes.min()}–{sizes.max()}, labels per client "
        f"{held.min()}–{held.max()} (mean {held.mean():.1f})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: draw the partition the given settings make."""
    from fedavg_mnist.overrides import compose_run_config

    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.analysis.label_counts", description=__doc__
    )
    parser.add_argument("overrides", nargs="*", help="the run's settings, as the CLI takes them")
    parser.add_argument("--out", type=Path, default=Path("label_counts"), help="path, no suffix")
    args = parser.parse_args(argv)
    try:
        config = compose_run_config(args.overrides)
        counts = label_counts(config)
        paths = figure_paths(args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw_label_counts(counts, figure_title(config, counts), paths)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{counts.shape[0]} clients; wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
