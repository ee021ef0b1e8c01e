"""Shorter polling in Flower's simulation, whose fixed cost per round is two 100 ms sleeps.

In `run_simulation`, a message waits for two polling loops: the simulation engine looks for
new messages every 100 ms (`vce_api.add_messages_to_queue`) and the `InMemoryGrid` pulls
replies every 100 ms (`pull_interval`). A one-client full-batch MLP round computes for
~10 ms, so FedSGD's thousands of rounds would mostly wait. Flower exposes neither interval
as a setting of `run_simulation`: the grid's is a public attribute, set in the `ServerApp`;
the engine's loop is replaced by the same loop with a shorter wait.
"""

import threading
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

DEFAULT_POLL_INTERVAL = 0.1  # Flower's value for both loops


def shorten_grid_polling(grid: Grid, interval: float) -> None:
    """Pull replies every `interval` seconds (only Flower's in-memory simulation grid polls)."""
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = interval


def shorten_engine_polling(interval: float) -> None:
    """Make the simulation engine look for new messages every `interval` seconds."""
    from flwr.server.superlink.fleet.vce import vce_api

    def add_messages_to_queue(
        state: Any, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(interval)

    vce_api.add_messages_to_queue = add_messages_to_queue
