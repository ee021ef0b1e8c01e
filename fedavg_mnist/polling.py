"""Event-driven wake-ups for Flower's simulation, whose fixed cost per round is polling.

In `run_simulation`, the ServerApp and the simulation engine run as threads of one process
and hand messages over through Flower's in-memory LinkState, each side polling it: the
engine scans every node for new messages every 100 ms (`vce_api.add_messages_to_queue`) and
the `InMemoryGrid` pulls replies every 100 ms (`pull_interval`). A one-client full-batch MLP
round computes for ~10 ms, so FedSGD's thousands of rounds would mostly wait; polling more
often instead burns a core scanning all K nodes. This module keeps Flower's loops and
LinkState and only wakes each loop when the other side has handed something over:

- `install_engine_wakeups` replaces the engine's two hand-over loops (module functions of
  `flwr.server.superlink.fleet.vce.vce_api`, looked up when the engine starts) with the same
  loops that also wait on, or signal, an event;
- `wake_on_messages` wraps the grid's `push_messages`/`pull_messages` (public methods) of
  the `ServerApp`'s `InMemoryGrid` to signal pushes and wait for replies.

The grid falls back to Flower's 100 ms when no reply signals it. The engine still wakes every
100 ms to notice the end of the run, but scans unsignalled only once a second: in
`run_simulation` every push signals it, and scanning K=100 nodes every 100 ms took 6-7% of
a core all through the clients' training.
Neither is installed under `flwr run`, whose grid and engine are Flower's own.
"""

import threading
import time
from collections.abc import Iterable
from queue import Empty, Queue
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

FLOWER_POLL_INTERVAL = 0.1  # seconds, Flower's interval for both loops
ENGINE_IDLE_RESCAN = 1.0  # seconds between the engine's unsignalled scans
_messages_pushed = threading.Event()  # the ServerApp pushed messages for the nodes
_reply_stored = threading.Event()  # the engine stored a node's reply


def wake_on_messages(grid: Grid) -> None:
    """Make the in-memory simulation grid signal pushes and wait for replies, not sleep."""
    if not hasattr(grid, "pull_interval"):  # only Flower's InMemoryGrid polls
        return
    push, pull = grid.push_messages, grid.pull_messages

    def push_messages(messages: Iterable[Message]) -> Iterable[str]:
        message_ids = push(messages)
        _messages_pushed.set()
        return message_ids

    def pull_messages(message_ids: Iterable[str]) -> Iterable[Message]:
        message_ids = list(message_ids)
        if not message_ids:  # nothing sent (e.g. no federated evaluation): nothing to wait for
            return []
        _reply_stored.wait(FLOWER_POLL_INTERVAL)
        _reply_stored.clear()  # a reply stored from here on sets it again
        return pull(message_ids)

    grid.push_messages = push_messages  # type: ignore[method-assign]
    grid.pull_messages = pull_messages  # type: ignore[method-assign]
    grid.pull_interval = 0.0


def install_engine_wakeups() -> None:
    """Replace the simulation engine's hand-over loops by event-driven ones."""
    from flwr.server.superlink.fleet.vce import vce_api

    def add_messages_to_queue(
        state: Any, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
    ) -> None:
        next_scan = 0.0
        while not f_stop.is_set():
            if _messages_pushed.is_set() or time.monotonic() >= next_scan:
                _messages_pushed.clear()  # a push from here on is seen by the next scan
                next_scan = time.monotonic() + ENGINE_IDLE_RESCAN
                for node_id in nodes_mapping:
                    for message in state.get_message_ins(node_id=node_id, limit=1):
                        queue.put(message)
            _messages_pushed.wait(FLOWER_POLL_INTERVAL)  # and notice `f_stop` as Flower does

    def put_message_into_state(state: Any, queue: Queue[Message], f_stop: threading.Event) -> None:
        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(reply)
            _reply_stored.set()

    vce_api.add_messages_to_queue = add_messages_to_queue
    vce_api.put_message_into_state = put_message_into_state
