"""Centralized evaluation: a model's test loss and accuracy, one round after another.

`evaluate` is the plain function; `EvaluationQueue` evaluates each round's global model
while the next round trains.
"""

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

StateDict = dict[str, torch.Tensor]


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of `model` on the given examples."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start : start + batch_size])
            targets = labels[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, targets, reduction="sum")
            correct += (logits.argmax(dim=1) == targets).sum()
    return float(loss_sum) / len(labels), int(correct) / len(labels)


class TargetReached(Exception):
    """The run reached its target accuracy and stops at it (`stop_at_target`)."""


class EvaluationQueue:
    """Evaluates the rounds' global models one after another, on a thread of its own.

    FedAvg never reads a round's test accuracy, so round r+1's clients can train while
    round r's model is evaluated: in a FedSGD round, evaluating the test set takes longer
    than training. `evaluate_round(server_round, state_dict)` evaluates and records one
    round and returns True when the run is to stop there; the rounds after it that were
    already trained are then neither evaluated nor recorded, so the history is the same as
    evaluating each round before training the next. An evaluation's exception is raised by
    the next `submit` or by `finish`.
    """

    def __init__(self, evaluate_round: Callable[[int, Any], bool]) -> None:
        self.evaluate_round = evaluate_round
        self.stopped_at: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation")
        self._pending: deque[Future[None]] = deque()

    def _run(self, server_round: int, state: Any) -> None:
        if self.stopped_at is None and self.evaluate_round(server_round, state):
            self.stopped_at = server_round

    def _collect(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0].done()):
            self._pending.popleft().result()

    def submit(self, server_round: int, state: Any) -> None:
        """Queue a round's global model (with what else `evaluate_round` takes).

        Raises `TargetReached` once an earlier round stopped the run.
        """
        self._collect(wait=False)
        if self.stopped_at is not None:
            raise TargetReached
        self._pending.append(self._executor.submit(self._run, server_round, state))

    def finish(self) -> None:
        """Wait for every queued evaluation."""
        try:
            self._collect(wait=True)
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
