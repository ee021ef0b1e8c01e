"""How a run is read: its best-so-far curve, and the rounds it took to reach its target.

Two readings of "rounds to target" are kept apart, and computed only here:

- `first_round_at_target`: the first evaluated round (>= 1) whose test accuracy reaches
  the target, a whole round; a run with `stop_at_target` stops there.
- `rounds_to_target`: where the best-so-far curve crosses the target, linearly
  interpolated between evaluated rounds; how the paper reads its tables' numbers off its
  curves, and what the report's tables show.

The CLI's summary line, `results.json` and the report all take them from `summarize`.
"""

from collections.abc import Sequence
from typing import Any


def best_so_far(accuracies: Sequence[float]) -> list[float]:
    """Return the monotone curve the paper reads: best test accuracy up to each round."""
    curve, best = [], float("-inf")
    for accuracy in accuracies:
        best = max(best, accuracy)
        curve.append(best)
    return curve


def first_round_at_target(
    rounds: Sequence[int], accuracies: Sequence[float], target: float
) -> int | None:
    """Return the first round (>= 1) whose test accuracy reaches `target`, or None."""
    for server_round, accuracy in zip(rounds, accuracies, strict=True):
        if server_round >= 1 and accuracy >= target:
            return server_round
    return None


def rounds_to_target(
    rounds: Sequence[int], accuracies: Sequence[float], target: float
) -> float | None:
    """Return where the best-so-far curve crosses `target`, linear between evaluated rounds.

    Rounds start at 0 (the initial model); None when the curve never reaches `target`.
    """
    curve = best_so_far(accuracies)
    for index, (server_round, best) in enumerate(zip(rounds, curve, strict=True)):
        if best < target:
            continue
        if index == 0:
            return float(server_round)
        previous_round, previous_best = rounds[index - 1], curve[index - 1]
        fraction = (target - previous_best) / (best - previous_best)
        return previous_round + fraction * (server_round - previous_round)
    return None


def summarize(history: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Return a history's best accuracy and round, and both readings of rounds to target."""
    evaluated = [record for record in history if record["round"] >= 0]
    rounds = [int(record["round"]) for record in evaluated]
    accuracies = [float(record["accuracy"]) for record in evaluated]
    trained = [record for record in evaluated if record["round"] >= 1]
    best = max(trained, key=lambda record: record["accuracy"], default=None)
    return {
        "best_accuracy": best["accuracy"] if best else None,
        "best_round": best["round"] if best else None,
        "first_round_at_target": first_round_at_target(rounds, accuracies, target),
        "rounds_to_target": rounds_to_target(rounds, accuracies, target),
    }
