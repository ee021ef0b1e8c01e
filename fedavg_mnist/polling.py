"""Event-driven wake-ups for Flower's simulation, whose fixed cost per round is polling.

In a simulation (the Hydra CLI's `run_simulation` and `flwr run`'s `flwr-simulation` alike)
the ServerApp and the simulation engine run as threads of one process and hand messages
over through Flower's in-memory LinkState, each side polling it: the engine scans every
node for new messages every 100 ms (`vce_api.add_messages_to_queue`) and the `InMemoryGrid`
pulls replies every 100 ms (`pull_interval`). A one-client full-batch 2NN round computes for
~10 ms, so FedSGD's thousands of rounds would mostly wait; polling more often instead burns
a core scanning all K nodes. This module keeps Flower's loops and LinkState and only wakes
each loop when the other side has handed something over:

- `engine_wakeups()` puts, for one run, that run's `EngineWakeups` loops in place of the
  engine's two hand-over loops, module functions of `flwr.server.superlink.fleet.vce.vce_api`
  that `run_api` looks up when the engine starts, and puts Flower's back when the run ends.
  These are Flower internals: they are replaced only if they exist with the parameters
  written for, else Flower's own loops stay and one warning says so. The run installs them
  before the engine starts: the Hydra CLI around `run_simulation`, the `ServerApp` under
  `flwr run` as its first step (Flower starts the ServerApp's thread before the engine).
- `EngineWakeups.wrap_grid` wraps the grid's `push_messages`/`pull_messages` (public
  methods) of the `ServerApp`'s `InMemoryGrid` to signal pushes and wait for replies.

Each run's events live in its own `EngineWakeups`: nothing outlives the run.

The grid falls back to Flower's 100 ms when no reply signals it. The engine scans every
100 ms until a wrapped grid signals its pushes; from then on it wakes every 100 ms only to
notice the end of the run and scans unsignalled once a second (scanning K=100 nodes every
100 ms took 6-7% of a core all through the clients' training).
"""

import importlib
import inspect
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from queue import Empty, Queue
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

ENGINE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
# The engine's loops this module replaces, with the parameters it was written for.
ENGINE_LOOPS = {
    "add_messages_to_queue": ("state", "queue", "nodes_mapping", "f_stop"),
    "put_message_into_state": ("state", "queue", "f_stop"),
}
FLOWER_POLL_INTERVAL = 0.1  # seconds, Flower's interval for both loops
ENGINE_IDLE_RESCAN = 1.0  # seconds between the engine's unsignalled scans once pushes signal


class EngineWakeups:
    """One run's hand-over events between its `ServerApp`'s grid and the simulation engine."""

    def __init__(self) -> None:
        self.grid_signals = threading.Event()  # a wrapped grid signals its pushes
        self.messages_pushed = threading.Event()  # the ServerApp pushed messages for the nodes
        self.reply_stored = threading.Event()  # the engine stored a node's reply

    def wrap_grid(self, grid: Grid) -> None:
        """Make the in-memory simulation grid signal pushes and wait for replies, not sleep."""
        if not hasattr(grid, "pull_interval"):  # only Flower's InMemoryGrid polls
            return
        push, pull = grid.push_messages, grid.pull_messages

        def push_messages(messages: Iterable[Message]) -> Iterable[str]:
            message_ids = push(messages)
            self.messages_pushed.set()
            return message_ids

        def pull_messages(message_ids: Iterable[str]) -> Iterable[Message]:
            message_ids = list(message_ids)
            if not message_ids:  # nothing sent (no federated evaluation): nothing to wait for
                return []
            self.reply_stored.wait(FLOWER_POLL_INTERVAL)
            self.reply_stored.clear()  # a reply stored from here on sets it again
            return pull(message_ids)

        grid.push_messages = push_messages  # type: ignore[method-assign]
        grid.pull_messages = pull_messages  # type: ignore[method-assign]
        grid.pull_interval = 0.0
        self.grid_signals.set()

    def add_messages_to_queue(
        self,
        state: Any,
        queue: Queue[Message],
        nodes_mapping: dict[int, int],
        f_stop: threading.Event,
    ) -> None:
        """Flower's loop moving the nodes' messages into the engine's queue, woken by pushes."""
        next_scan = 0.0
        while not f_stop.is_set():
            if self.messages_pushed.is_set() or time.monotonic() >= next_scan:
                self.messages_pushed.clear()  # a push from here on is seen by the next scan
                signalled = self.grid_signals.is_set()
                rescan = ENGINE_IDLE_RESCAN if signalled else FLOWER_POLL_INTERVAL
                next_scan = time.monotonic() + rescan
                for node_id in nodes_mapping:
                    for message in state.get_message_ins(node_id=node_id, limit=1):
                        queue.put(message)
            self.messages_pushed.wait(FLOWER_POLL_INTERVAL)  # and notice `f_stop` as Flower does

    def put_message_into_state(
        self, state: Any, queue: Queue[Message], f_stop: threading.Event
    ) -> None:
        """Flower's loop storing the nodes' replies, signalling each to the grid."""
        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(reply)
            self.reply_stored.set()


def engine_mismatch(engine: Any) -> str | None:
    """Say how the engine module differs from what the replacements expect, or None."""
    for name, expected in ENGINE_LOOPS.items():
        current = getattr(engine, name, None)
        if current is None:
            return f"it has no {name}"
        parameters = tuple(inspect.signature(current).parameters)
        if parameters != expected:
            return f"its {name} takes {parameters}, not {expected}"
    return None


def engine_loaded() -> bool:
    """Whether this process runs (or is about to run) Flower's simulation engine."""
    return ENGINE_MODULE in sys.modules


@contextmanager
def engine_wakeups() -> Iterator[EngineWakeups | None]:
    """Run the engine's hand-over loops event-driven for the `with` block; then Flower's again.

    Yields the run's `EngineWakeups` (whose `wrap_grid` the `ServerApp` calls), or None when
    Flower's engine is not the one written for (one warning; Flower's polling stays).
    """
    engine = importlib.import_module(ENGINE_MODULE)
    mismatch = engine_mismatch(engine)
    if mismatch is not None:
        print(
            f"warning: fast_polling: Flower's simulation engine ({ENGINE_MODULE}) is not "
            f"the one fedavg_mnist was written for ({mismatch}); using Flower's own 100 ms "
            "polling",
            file=sys.stderr,
            flush=True,
        )
        yield None
        return
    wakeups = EngineWakeups()
    originals = {name: getattr(engine, name) for name in ENGINE_LOOPS}
    for name in ENGINE_LOOPS:
        setattr(engine, name, getattr(wakeups, name))
    try:
        yield wakeups
    finally:
        for name, original in originals.items():
            setattr(engine, name, original)
