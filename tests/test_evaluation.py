"""The evaluation queue: each round evaluated in order while the next trains, stops exact."""

import threading
import time

import pytest
import torch

from fedavg_mnist.evaluation import EvaluationQueue, TargetReached


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


def test_rounds_are_evaluated_in_order_on_another_thread() -> None:
    seen: list[tuple[int, float, str]] = []

    def evaluate_round(server_round: int, state: dict[str, torch.Tensor]) -> bool:
        time.sleep(0.01 * (5 - server_round))  # later rounds finish faster: order must hold
        seen.append((server_round, float(state["w"][0]), threading.current_thread().name))
        return False

    queue = EvaluationQueue(evaluate_round)
    for server_round in range(5):
        queue.submit(server_round, _state(server_round))
    queue.finish()
    assert [(r, w) for r, w, _ in seen] == [(r, float(r)) for r in range(5)]
    assert all(name.startswith("evaluation") for _, _, name in seen)


def test_rounds_trained_after_the_target_are_not_recorded() -> None:
    recorded: list[int] = []
    release = threading.Event()

    def evaluate_round(server_round: int, state: dict[str, torch.Tensor]) -> bool:
        release.wait(5)  # rounds 3 and 4 are submitted before round 2's result is known
        recorded.append(server_round)
        return server_round == 2

    queue = EvaluationQueue(evaluate_round)
    for server_round in range(5):
        queue.submit(server_round, _state(server_round))
    release.set()
    time.sleep(0.2)
    with pytest.raises(TargetReached):
        queue.submit(5, _state(5))
    queue.finish()
    assert recorded == [0, 1, 2] and queue.stopped_at == 2


def test_an_evaluation_error_reaches_the_caller() -> None:
    def evaluate_round(server_round: int, state: dict[str, torch.Tensor]) -> bool:
        raise OSError(f"disk full at round {server_round}")

    queue = EvaluationQueue(evaluate_round)
    queue.submit(0, _state(0))
    with pytest.raises(OSError, match="disk full at round 0"):
        queue.finish()
