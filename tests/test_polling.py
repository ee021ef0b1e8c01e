"""The wake-ups replacing two loops of Flower's simulation engine, and their fallback."""

import io
import threading
import time
from queue import Queue

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from fedavg_mnist import polling
from fedavg_mnist.progress import Progress


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch):
    """Flower's engine module, its loops put back after the test."""
    for name in polling.ENGINE_LOOPS:
        monkeypatch.setattr(vce_api, name, getattr(vce_api, name))
    return vce_api


def test_a_runs_wakeups_replace_the_engines_loops_for_the_run_only(engine) -> None:
    flowers = {name: getattr(engine, name) for name in polling.ENGINE_LOOPS}
    with polling.engine_wakeups() as wakeups:
        assert wakeups is not None
        assert engine.add_messages_to_queue == wakeups.add_messages_to_queue
        assert engine.put_message_into_state == wakeups.put_message_into_state
        with polling.engine_wakeups() as next_run:  # a second run has events of its own
            assert next_run is not None and next_run.reply_stored is not wakeups.reply_stored
    assert {name: getattr(engine, name) for name in polling.ENGINE_LOOPS} == flowers


def test_an_engine_of_another_shape_keeps_its_own_loops_with_one_warning(
    engine, capsys: pytest.CaptureFixture[str]
) -> None:
    def add_messages_to_queue(state, queue, nodes_mapping, f_stop, metrics): ...

    engine.add_messages_to_queue = add_messages_to_queue
    put_message_into_state = engine.put_message_into_state
    with polling.engine_wakeups() as wakeups:
        assert wakeups is None
        assert engine.add_messages_to_queue is add_messages_to_queue  # Flower's own stays
        assert engine.put_message_into_state is put_message_into_state
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and "takes ('state', 'queue', 'nodes_mapping'" in warnings[0]


class _State:
    """Flower's LinkState as the two loops use it."""

    def __init__(self) -> None:
        self.pending: dict[int, list[str]] = {1: [], 2: []}
        self.stored: list[str] = []

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        taken, self.pending[node_id] = self.pending[node_id][:limit], self.pending[node_id][limit:]
        return taken

    def store_message_res(self, reply: str) -> None:
        self.stored.append(reply)


def test_a_push_wakes_the_engine_and_a_stored_reply_wakes_the_grid() -> None:
    state, stop = _State(), threading.Event()
    inbox: Queue[str] = Queue()
    replies: Queue[str] = Queue()
    wakeups = polling.EngineWakeups()
    wakeups.grid_signals.set()  # a wrapped grid: the engine rescans only once a second
    loops = [
        threading.Thread(
            target=wakeups.add_messages_to_queue, args=(state, inbox, {1: 0, 2: 1}, stop)
        ),
        threading.Thread(target=wakeups.put_message_into_state, args=(state, replies, stop)),
    ]
    for loop in loops:
        loop.start()
    try:
        time.sleep(0.2)  # past the first scan
        state.pending[2].append("train")
        pushed = time.monotonic()
        wakeups.messages_pushed.set()
        assert inbox.get(timeout=0.5) == "train"
        # woken by the push: unsignalled, the next scan would come 0.8 s later (a rescan a
        # second once the grid signals); half that leaves room for a loaded machine
        assert time.monotonic() - pushed < 0.4
        wakeups.reply_stored.clear()
        replies.put("reply")
        assert wakeups.reply_stored.wait(0.5) and state.stored == ["reply"]
    finally:
        stop.set()
        for loop in loops:
            loop.join()


def test_progress_is_one_line_per_round_when_piped_and_a_bar_on_a_terminal() -> None:
    piped = io.StringIO()
    progress = Progress(3, stream=piped)
    progress.update(0, 0.1, 2.3, 5.0)
    progress.update(1, 0.9, 0.4, 2.0)
    assert piped.getvalue().splitlines() == [
        "round    0  accuracy 0.1000  loss 2.3000    5.00s",
        "round    1  accuracy 0.9000  loss 0.4000    2.00s",
    ]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(4, stream=terminal, width=8)
    bar.update(1, 0.9, 0.4, 30.0)
    bar.update(2, 0.8, 0.5, 30.0)
    bar.close()
    assert terminal.getvalue().endswith(
        "\rround 2/4 [####....] accuracy 0.8000 (best 0.9000)  ETA 1m00s  \n"
    )
