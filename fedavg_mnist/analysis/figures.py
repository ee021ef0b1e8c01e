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
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "pdf")  # each figure command writes both


def figure_paths(stem: Path) -> list[Path]:
    """Return where a command saves its figure: `stem` with each of `FIGURE_FORMATS`."""
    return [stem.with_name(f"{stem.name}.{suffix}") for suffix in FIGURE_FORMATS]


def save_figure(fig: "Figure", paths: Sequence[Path], dpi: int = 150) -> None:
    """Lay `fig` out and save it to each path (the suffix picks the format)."""
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=dpi)


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


def is_unfinished(document: dict[str, Any]) -> bool:
    """Whether the run stopped before its last round without reaching its target."""
    rounds = [r["round"] for r in document["history"]]
    target = float(document["target_accuracy"])
    reached = any(r["accuracy"] >= target for r in document["history"] if r["round"] >= 1)
    completed = max(rounds, default=0) >= int(document["config"]["num_rounds"])
    return not reached and not (document.get("finished") and completed)


def method_key(document: dict[str, Any]) -> tuple[Any, ...]:
    """Return the method of a run: its E and B."""
    cfg = document["config"]
    return (cfg["local_epochs"], batch_label(cfg["batch_size"]))


def setting_key(document: dict[str, Any]) -> tuple[Any, ...]:
    """Return what a colour is looked up by: the method (E, B) and η, in every panel alike."""
    return (*method_key(document), float(document["config"]["lr"]))


def colours_for(
    documents: Sequence[dict[str, Any]],
    panels: Sequence[Sequence[dict[str, Any]]] | None = None,
) -> dict[tuple[Any, ...], Any]:
    """One colour per setting, assigned in a fixed order, so panels agree.

    Where every panel holds one η per method (the paper's Figure 2, η in the labels), a
    colour stands for the method alone, so a method keeps its colour when its best η differs
    between panels; otherwise for the method and η. More than ten colours come from tab20,
    so two curves of one panel share a colour only beyond twenty settings.
    """
    import matplotlib

    def one_rate_per_method(runs: Sequence[dict[str, Any]]) -> bool:
        return len({setting_key(d) for d in runs}) == len({method_key(d) for d in runs})

    by_method = all(one_rate_per_method(runs) for runs in (panels or [documents]))
    colour_key = method_key if by_method else setting_key
    keys = sorted({colour_key(d) for d in documents}, key=repr)
    palette = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"]
    index = {key: position for position, key in enumerate(keys)}
    return {setting_key(d): palette(index[colour_key(d)] % palette.N) for d in documents}


def draw_accuracy(
    ax: "Axes",
    documents: Sequence[dict[str, Any]],
    log_x: bool = True,
    labels: Sequence[str] | None = None,
    colours: Mapping[tuple[Any, ...], Any] | None = None,
) -> None:
    """Draw each run's best-so-far test accuracy against round on `ax`, with the targets.

    The y axis fits every curve (from its lowest point after round 1); an unfinished run
    is dashed, ends in a cross and says so in its label.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator

    colours = colours or colours_for(documents)
    lowest = 1.0
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, document in enumerate(documents):
        groups.setdefault(seedless_key(document), []).append(index)
    for indices in groups.values():
        first = documents[indices[0]]
        label = labels[indices[0]] if labels else run_label(first)
        colour = colours.get(setting_key(first))
        if len({documents[i]["config"].get("seed", 0) for i in indices}) > 1:
            lowest = min(lowest, draw_seed_band(ax, [documents[i] for i in indices], label, colour))
            continue
        document = first
        trained = [r for r in document["history"] if r["round"] >= 1]
        rounds = [r["round"] for r in trained]
        curve = best_so_far([r["accuracy"] for r in trained])
        unfinished = is_unfinished(document)
        if unfinished:
            label += f" (unfinished after {rounds[-1] if rounds else 0})"
        style = "--" if unfinished else "-"
        ax.plot(rounds, curve, style, color=colour, label=label)
        if unfinished and rounds:
            ax.plot(rounds[-1], curve[-1], "x", color=colour)
        lowest = min([lowest, *curve])
    targets = sorted({float(d["target_accuracy"]) for d in documents})
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.0%}")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    floor = min([lowest, *targets]) if targets else lowest
    ax.set_ylim(max(0.0, floor - 0.01), 1.0 + 0.002)
    ax.set_xlabel("communication round" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("test accuracy, best so far")
    ax.grid(True, alpha=0.3, which="major")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def seedless_key(document: dict[str, Any]) -> tuple[Any, ...]:
    """Return what makes runs the same but for their seed (one band of seeds per key)."""
    cfg = document["config"]
    return (
        cfg["model"]["name"],
        recorded_partition(cfg),
        cfg["num_clients"],
        cfg["client_fraction"],
        *setting_key(document),
        repr(cfg.get("strategy")),
        repr(cfg.get("dp")),
    )


def draw_seed_band(
    ax: "Axes", documents: Sequence[dict[str, Any]], label: str, colour: Any
) -> float:
    """Draw the mean best-so-far curve of runs differing only in seed, min–max as a band.

    Drawn up to the last round every seed reached; returns the band's lowest point.
    """
    curves = []
    for document in documents:
        trained = [r for r in document["history"] if r["round"] >= 1]
        curves.append(best_so_far([r["accuracy"] for r in trained]))
    common = min(len(curve) for curve in curves)
    rounds = list(range(1, common + 1))
    columns = [[curve[i] for curve in curves] for i in range(common)]
    low, high = [min(c) for c in columns], [max(c) for c in columns]
    mean = [sum(c) / len(c) for c in columns]
    ax.fill_between(rounds, low, high, color=colour, alpha=0.2, linewidth=0)
    seeds = f"{len(documents)} seeds: mean, band min–max"
    ax.plot(rounds, mean, color=colour, label=f"{label} ({seeds}, to round {common})")
    return min(low, default=1.0)


def figure_title(documents: Sequence[dict[str, Any]]) -> str:
    """Name what the figure shows: MNIST, the model(s), K and C of its runs."""
    models = sorted({MODEL_NAMES.get(d["config"]["model"]["name"], "?") for d in documents})
    fractions = sorted({float(d["config"]["client_fraction"]) for d in documents})
    clients = sorted({int(d["config"]["num_clients"]) for d in documents})
    return (
        f"MNIST, {' and '.join(models)}, K={', '.join(map(str, clients))}, "
        f"C={', '.join(f'{c:g}' for c in fractions)}: test accuracy (best so far) against rounds"
    )


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

    every = [run for runs in panels.values() for run in runs] if panels else list(documents)
    colours = colours_for(every, list(panels.values()) if panels else None)
    if panels:
        fig = Figure(figsize=(6.5 * len(panels), 5.5))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]  # an array also for one panel
        for ax, (title, runs) in zip(axes, panels.items(), strict=True):
            labels = [method_label(run) for run in runs]
            draw_accuracy(ax, runs, log_x=log_x, labels=labels, colours=colours)
            ax.set_title(title, fontsize=10)
    else:
        fig = Figure(figsize=(7.5, 5.5))
        draw_accuracy(fig.subplots(), documents, log_x=log_x, colours=colours)
    fig.suptitle(figure_title(every), fontsize=10)
    try:
        save_figure(fig, [paths] if isinstance(paths, Path) else paths, dpi=120)
    except OSError as err:
        raise UserError(f"cannot write the plot: {err.strerror or err}") from err
