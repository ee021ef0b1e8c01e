"""One run per run directory, results never overwritten, a resume only of the same run.

`check_output_dir` only looks (the CLI calls it before Hydra writes anything);
`hold_run_dir` takes the folder for this process: an exclusive kernel lock (`flock`) on its
`.run.lock`, which the kernel releases when the process ends however it ends (SIGKILL, a
power cut), so no stale lock ever blocks a resume; `prepare_run_dir` checks, holds and
creates the folder, once per run, whichever launcher started it.
"""

import fcntl
import os
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedavg_mnist.checkpoint import CHECKPOINT_FILE
from fedavg_mnist.config import RESULT_SETTINGS, RunConfig
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import RESULTS_FILE, load_results, partition_name
from fedavg_mnist.settings import flatten


def nearest_existing(path: Path) -> Path:
    """Return `path`, or its nearest parent that exists: the folder a new one would be made in."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


LOCK_FILE = ".run.lock"  # in the run directory: who holds it, for the one line a second run gets
_held: dict[Path, int] = {}  # the run directories this process holds: their lock's descriptor


def hold_run_dir(output_dir: Path) -> None:
    """Hold the run directory for this process, creating it; one line if another holds it.

    Held until `release_run_dir` or the end of the process. A run directory this process
    holds already is held once.
    """
    output_dir = output_dir.expanduser().resolve()
    if output_dir in _held:
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"output directory {output_dir} is not writable: {err.strerror}") from err
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 512).decode(errors="replace").strip()
        os.close(descriptor)
        raise in_use(output_dir, holder) from None
    started = datetime.now(UTC).isoformat(timespec="seconds")
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"PID {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
    _held[output_dir] = descriptor


def in_use(output_dir: Path, holder: str) -> UserError:
    """Return the one line a run gets for a run directory another run holds."""
    return UserError(
        f"{output_dir} is in use by {holder or 'another process'}: one run per run directory "
        "(wait for it to end, or choose another output directory)"
    )


def check_not_held(output_dir: Path) -> None:
    """Fail in one line if another process holds the run directory; writes nothing."""
    if output_dir in _held or not (output_dir / LOCK_FILE).is_file():
        return
    try:
        descriptor = os.open(output_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise in_use(
            output_dir, os.read(descriptor, 512).decode(errors="replace").strip()
        ) from None
    finally:
        os.close(descriptor)  # and with it the lock, if this look took it


def release_run_dir(output_dir: Path) -> None:
    """Let go of a run directory this process holds (the lock file stays, unlocked)."""
    descriptor = _held.pop(output_dir.expanduser().resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def check_output_dir(output_dir: Path, resume: bool = False) -> None:
    """Fail in one line if another run holds it, results are in the way, or nothing resumes.

    Writes nothing: a folder that does not exist yet must be one the user may create.
    """
    output_dir = output_dir.expanduser().resolve()
    check_not_held(output_dir)
    results = output_dir / RESULTS_FILE
    if resume:
        if not (output_dir / CHECKPOINT_FILE).is_file():
            raise UserError(f"nothing to resume: no {CHECKPOINT_FILE} in {output_dir}")
    elif results.exists():
        raise UserError(
            f"{results} already exists: choose another output directory (or resume=true)"
        )
    existing = nearest_existing(output_dir)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output directory {output_dir} is not writable: {existing} is not")


def result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Return the settings that change results, from a recorded config of any version.

    A run recorded before strategies, DP and partition settings existed ran their defaults.
    """
    defaults = asdict(RunConfig())
    older = {
        key: defaults[key] for key in ("strategy", "dp", "partition_alpha", "partition_classes")
    }
    flat = flatten({**older, **config})
    flat["partition"] = partition_name(config)
    return {key: flat.get(key) for key in RESULT_SETTINGS}


def check_resumable(config: RunConfig) -> None:
    """Refuse to resume a run under other settings or one that has nothing left to do."""
    previous = load_results(Path(config.output_dir))
    saved, now = result_settings(previous["config"]), result_settings(config.record())
    changed = [key for key in RESULT_SETTINGS if saved[key] != now[key]]
    if changed:
        key = changed[0]
        raise UserError(
            f"cannot resume {config.output_dir} with {key}={now[key]}: "
            f"the run used {key}={saved[key]}"
        )
    if previous.get("finished") and previous.get("completed_rounds", 0) >= config.num_rounds:
        raise UserError(
            f"nothing to resume: {config.output_dir} finished its "
            f"{previous['completed_rounds']} rounds (raise num_rounds to continue it)"
        )


def prepare_run_dir(config: RunConfig) -> None:
    """Check that the run may write (or resume) its `output_dir`, then hold and create it."""
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir, config.resume)
    if config.resume:
        check_resumable(config)
    hold_run_dir(output_dir)
    check_output_dir(output_dir, config.resume)  # as it is now that no other run can change it
