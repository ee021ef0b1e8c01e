"""A queue of long runs that outlives any stop: each cell resumes from its checkpoint.

    python -m fedavg_mnist.ops.campaign run conf/campaign/cnn.yaml [--nice 19] [--jobs 4]
                                    [--time-limit 480] [--cells 'table2_cnn/pathological_*']
    python -m fedavg_mnist.ops.campaign status conf/campaign/cnn.yaml
    python -m fedavg_mnist.ops.campaign stop conf/campaign/cnn.yaml

The queue file names cells (a run directory and the CLI's overrides for it). `run` goes
through them in order, each through the project's CLI in its own process group: a cell
with a `checkpoint.pt` and an unfinished `results.json` continues with `resume=true`, a
finished one is skipped. `--jobs N` keeps N cells running at once (a GPU with many cores
has room for several runs; each cell's output then goes to `campaign.log` in its run
directory), `--cells` takes the cells matching the patterns, in the patterns' order, and
`--time-limit` stops the queue after that many seconds (a lease on a machine that ends).
The queue's state is read from the run directories themselves (done, started, left), so
committing them keeps it in the repo; `status` writes it to `STATUS.md` beside the runs.
`stop` (or Ctrl-C, or SIGTERM) ends the running cells and the queue at once; a cell loses
at most the rounds since its last checkpoint (the queue's cells checkpoint every round).
A cell whose simulation fails before logging a round is started once more before the queue
counts it as failed: on a busy machine Ray can time out starting.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedavg_mnist.checkpoint import CHECKPOINT_FILE
from fedavg_mnist.errors import UserError
from fedavg_mnist.ops.campaign_queue import (
    DONE,
    LOCK_FILE,
    STARTED,
    STATUS_FILE,
    Queue,
    QueuedRun,
    cell_state,
    load_queue,
    rounds_logged,
    running_cells,
    select_cells,
    status_markdown,
)
from fedavg_mnist.storage import write_text_atomic

CELL_LOG = "campaign.log"  # a cell's output, in its run directory, when cells run at once
POLL_S = 0.5
STAGGER_S = 10.0  # between the starts of cells running at once
STOP_GRACE_S = 10.0
SIMULATION_FAILED = 1  # the CLI's exit status when Flower or Ray fail (2: bad input)


def cell_command(queue: Queue, cell: QueuedRun) -> list[str]:
    """Return the CLI command that starts or resumes the cell."""
    run_dir = queue.run_dir(cell)
    resume = ["resume=true"] if cell_state(run_dir) == STARTED else []
    return [
        sys.executable,
        "-m",
        "fedavg_mnist.main",
        *queue.common,
        *cell.overrides,
        f"hydra.run.dir={run_dir}",
        *resume,
    ]


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End a cell's process group (the CLI, Ray and its workers): SIGINT, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            os.killpg(process.pid, signal.SIGKILL)  # whatever the CLI left in its group
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


class _Stopped(Exception):
    pass


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _start(
    queue: Queue, cell: QueuedRun, niceness: int, log: Any, own_log: bool
) -> subprocess.Popen[bytes]:
    command = cell_command(queue, cell)
    print(f"[{time.strftime('%H:%M:%S')}] {cell.name}: {' '.join(command[3:])}", file=log)
    log.flush()
    output = log
    if own_log:  # cells at once: each writes its own log
        queue.run_dir(cell).mkdir(parents=True, exist_ok=True)
        output = open(queue.run_dir(cell) / CELL_LOG, "ab")  # noqa: SIM115 (the child keeps it)
    try:
        return subprocess.Popen(
            command,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    finally:
        if output is not log:
            output.close()


def _write_lock(lock: Path, running: dict[QueuedRun, Any]) -> None:
    """Say which process runs the queue, and its cells, in the runs directory."""
    write_text_atomic(lock, " ".join([str(os.getpid()), *(cell.name for cell in running)]) + "\n")


def _finish(queue: Queue, cell: QueuedRun, code: int, log: Any, keep_going: bool) -> bool:
    """Tidy a cell that ended; return whether it failed."""
    if code == 0 and cell_state(queue.run_dir(cell)) == DONE:
        # the results are what is kept; a checkpoint is only for a cell to resume
        (queue.run_dir(cell) / CHECKPOINT_FILE).unlink(missing_ok=True)
    if code != 0:  # a cell that fails needs a look before the queue goes on
        then = "the queue goes on (--keep-going)" if keep_going else "the queue stops here"
        print(f"{cell.name}: exit status {code}; {then}", file=log)
        log.flush()
    return code != 0


def run_queue(
    queue: Queue,
    niceness: int = 0,
    log: Any = sys.stdout,
    jobs: int = 1,
    time_limit_s: float | None = None,
    patterns: Sequence[str] = (),
    keep_going: bool = False,
) -> int:
    """Run the cells not done, in order, `jobs` at a time, until one fails or time is up.

    Returns the number of cells that failed; after a failure no new cell starts (unless
    `keep_going`) and the running ones finish.
    """
    if other := running_cells(queue):
        raise UserError(f"the queue is already running (pid {other[0]}, {' '.join(other[1])})")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {jobs}")
    pending = [
        cell for cell in select_cells(queue, patterns) if cell_state(queue.run_dir(cell)) != DONE
    ]
    queue.runs_dir.mkdir(parents=True, exist_ok=True)
    lock = queue.runs_dir / LOCK_FILE
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    running: dict[QueuedRun, subprocess.Popen[bytes]] = {}
    rounds_before: dict[QueuedRun, int] = {}  # each running cell's rounds when it started
    retried: set[QueuedRun] = set()
    failures, last_start = 0, float("-inf")
    try:
        while pending or running:
            while pending and len(running) < jobs and (keep_going or not failures):
                cell = pending.pop(0)
                if cell_state(queue.run_dir(cell)) == DONE:  # finished elsewhere meanwhile
                    continue
                if running:  # Rays starting at the same moment can time out: one at a time
                    time.sleep(max(0.0, last_start + STAGGER_S - time.monotonic()))
                last_start = time.monotonic()
                rounds_before[cell] = rounds_logged(queue.run_dir(cell))
                running[cell] = _start(queue, cell, niceness, log, own_log=jobs > 1)
                _write_lock(lock, running)
            if not running:
                break
            if deadline is not None and time.monotonic() >= deadline:
                print(f"time limit of {time_limit_s:g} s reached: the running cells stop", file=log)
                break
            time.sleep(POLL_S)
            for cell, process in list(running.items()):
                if (code := process.poll()) is not None:
                    stop_group(process)  # whatever the CLI left in its group
                    del running[cell]
                    _write_lock(lock, running)
                    no_round = rounds_logged(queue.run_dir(cell)) == rounds_before[cell]
                    if code == SIMULATION_FAILED and no_round and cell not in retried:
                        retried.add(cell)
                        pending.insert(0, cell)
                        again = f"exit status {code} before any round; started once more"
                        print(f"{cell.name}: {again}", file=log)
                        continue
                    failures += _finish(queue, cell, code, log, keep_going)
    except _Stopped:
        print("stopped: resume with the same `run` command", file=log)
    finally:
        for process in running.values():
            stop_group(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.unlink(missing_ok=True)
        write_text_atomic(queue.runs_dir / STATUS_FILE, status_markdown(queue))
    return failures


def stop_queue(queue: Queue, timeout: float = 60.0) -> bool:
    """Ask the process running the queue to stop; return once it has (True) or not."""
    running = running_cells(queue)
    if running is None:
        return True
    os.kill(running[0], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_cells(queue) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running_cells(queue) is None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `run`, `status` or `stop` a queue file."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.ops.campaign", description=__doc__
    )
    parser.add_argument("action", choices=("run", "status", "stop"))
    parser.add_argument("queue", type=Path, help="queue file, e.g. conf/campaign/cnn.yaml")
    parser.add_argument("--nice", type=int, default=0, help="run the cells at this niceness")
    parser.add_argument("--jobs", type=int, default=1, help="cells running at once")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="stop the queue after this many seconds"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="start the next cells after one fails"
    )
    parser.add_argument(
        "--cells", nargs="+", default=(), metavar="PATTERN", help="run only these cells, in order"
    )
    args = parser.parse_args(argv)
    try:
        queue = load_queue(args.queue)
        if args.action == "run":
            failures = run_queue(
                queue,
                args.nice,
                sys.stdout,
                args.jobs,
                args.time_limit,
                args.cells,
                args.keep_going,
            )
            return 1 if failures else 0
        if args.action == "stop":
            if not stop_queue(queue):
                raise UserError("the queue did not stop within 60 s")
            return 0
        markdown = status_markdown(queue)
        if queue.runs_dir.is_dir():  # a queue not started yet has no folder to keep it in
            write_text_atomic(queue.runs_dir / STATUS_FILE, markdown)
        print(markdown, end="")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
