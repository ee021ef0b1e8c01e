"""Figures: test accuracy (best so far) against communication round, with the targets."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedavg_mnist.analysis.paper import PARTITION_NAMES, batch_label
from fedavg_mnist.config import MODEL_NAMES
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import partition_name as recorded_partition
from fedavg_mnist.rounds_to_target import best_so_far

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def partition_name(document: dict[str, Any]) -> str:
    """Return the run's partition as the paper names it: IID or non-IID."""
    name = recorded_partition(document["config"])
    return PARTITION_NAMES.get(name, name)


def run_label(document: dict[str, Any]) -> str:
    """Short legend text for a run: model, partition, C, E, B, η."""
    cfg = document["config"]
    partition = partition_name(document)
    model = MODEL_NAMES.get(cfg["model"]["name"], cfg["model"]["name"])
    return (
        f"{model} {partition} C={cfg['client_fraction']} "
        f"E={cfg['local_epochs']} B={batch_label(cfg['batch_size'])} η={cfg['lr']:g}"
    )


def draw_accuracy(
    ax: "Axes",
    documents: Sequence[dict[str, Any]],
    log_x: bool = True,
    labels: Sequence[str] | None = None,
) -> None:
    """Draw each run's best-so-far test accuracy against round on `ax`, with the targets."""
    for index, document in enumerate(documents):
        trained = [r for r in document["history"] if r["round"] >= 1]
        rounds = [r["round"] for r in trained]
        label = labels[index] if labels else run_label(document)
        ax.plot(rounds, best_so_far([r["accuracy"] for r in trained]), label=label)
    targets = sorted({float(d["target_accuracy"]) for d in documents})
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    if log_x:
        ax.set_xscale("log")
    lowest = min(targets, default=0.9)
    ax.set_ylim(max(0.0, lowest - 0.07), 1.0)
    ax.set_xlabel("communication round")
    ax.set_ylabel("test accuracy (best so far)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")


def method_label(document: dict[str, Any]) -> str:
    """Legend text as the paper's Figure 2 has it: FedSGD, or FedAvg with its E and B; η."""
    cfg = document["config"]
    epochs, batch = cfg["local_epochs"], cfg["batch_size"]
    method = "FedSGD" if (epochs, batch) == (1, None) else "FedAvg"
    return f"{method} E={epochs} B={batch_label(batch)} η={cfg['lr']:g}"


def plot_accuracy(
    documents: Sequence[dict[str, Any]],
    paths: Path | Sequence[Path],
    log_x: bool = False,
    panels: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> None:
    """Save the accuracy figure of `documents` to each of `paths` (suffix picks the format).

    With `panels` (title -> runs), one panel each, side by side, as the paper's Figure 2.
    """
    from matplotlib.figure import Figure

    if panels:
        fig = Figure(figsize=(6 * len(panels), 4.5))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]  # an array also for one panel
        for ax, (title, runs) in zip(axes, panels.items(), strict=True):
            draw_accuracy(ax, runs, log_x=log_x, labels=[method_label(run) for run in runs])
            ax.set_title(title)
    else:
        fig = Figure(figsize=(7, 4.5))
        draw_accuracy(fig.subplots(), documents, log_x=log_x)
    fig.tight_layout()
    try:
        for path in [paths] if isinstance(paths, Path) else paths:
            fig.savefig(path, dpi=120)
    except OSError as err:
        raise UserError(f"cannot write the plot: {err.strerror or err}") from err
