"""The processes a deployment starts: Flower's executables, ports, and stopping them all."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from fedavg_mnist.errors import ClientFailure, UserError

STOP_GRACE_S = 5.0


def flower_executable(name: str) -> str:
    """Return Flower's executable `name` installed beside the running interpreter.

    The deployment's processes must run the Flower (and the app) of this environment, also
    when its virtualenv is not activated; one line says what is missing otherwise.
    """
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise UserError(
            f"{name} not found beside {sys.executable}: install the project into this "
            "environment (pip install -e .) or run it with that environment's python"
        )
    return str(path)


def environment_path() -> str:
    """`PATH` with the interpreter's folder first: SuperNodes start `flwr-clientapp` by name."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def free_port(host: str) -> int:
    """Return a TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# A process is named by its PID and start time, so that a PID the kernel has handed to a
# new process since is never signalled.
ProcessId = tuple[int, int]


class Processes:
    """The processes a deployment started, each in a session of its own, stopped together."""

    def __init__(self, log_dir: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_dir, self.env, self.cwd = log_dir, env, cwd
        self.named: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], stdout: int | IO[bytes] | None = None) -> None:
        """Start `command` in its own session; its output goes to `<log_dir>/<name>.log`."""
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115  (kept open by the child)
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=self.cwd,
            stdout=stdout if stdout is not None else log,
            stderr=subprocess.STDOUT if stdout is None else log,
            start_new_session=True,
        )
        self.named.append((name, process))

    def exited(self) -> tuple[str, int] | None:
        """Return (name, exit status) of the first process that has ended, if any."""
        for name, process in self.named:
            if process.poll() is not None:
                return name, int(process.returncode)
        return None

    def stop(self) -> None:
        """SIGTERM each process tree (the newest first), then SIGKILL whatever is left.

        Flower's SuperLink starts its `flwr-serverapp` in a session of its own, which a
        signal to the SuperLink's session misses: every descendant is found by its parent
        before anything is signalled, while the tree still holds it, and signalled too.
        """
        started = [process.pid for _, process in reversed(self.named)]
        tree: set[ProcessId] = set()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            tree |= descendants(started)  # before their parents are signalled: still attached
            for _, process in reversed(self.named):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            signal_alive(tree, sig)
            deadline = time.monotonic() + STOP_GRACE_S
            for _, process in self.named:
                try:
                    process.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    pass
            while any(is_alive(p) for p in tree) and time.monotonic() < deadline:
                time.sleep(0.05)
        for _, process in self.named:  # the sessions' other processes (flwr-clientapp, ...)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stat(pid: int) -> list[str] | None:
    """Return the fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(roots: list[int]) -> set[ProcessId]:
    """Return every live descendant of the `roots` PIDs (Linux /proc; empty elsewhere)."""
    children: dict[int, list[ProcessId]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(entry.name), int(fields[19])))
    found: set[ProcessId] = set()
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child[0])
    return found


def is_alive(process: ProcessId) -> bool:
    """Return whether this very process (not a later one with its PID) still runs."""
    fields = _stat(process[0])
    return fields is not None and fields[0] != "Z" and int(fields[19]) == process[1]


def signal_alive(processes: set[ProcessId], sig: int) -> None:
    """Send `sig` to each of `processes` that still runs."""
    for process in processes:
        if is_alive(process):
            try:
                os.kill(process[0], sig)
            except ProcessLookupError:
                pass


def wait_for_port(host: str, port: int, processes: Processes, timeout: float = 120.0) -> None:
    """Wait until the SuperLink accepts connections (failing at once if a process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(processes)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise ClientFailure(f"the SuperLink did not listen on {host}:{port} within {timeout:g} s")


def check_alive(processes: Processes) -> None:
    """Fail in one line if a SuperLink or SuperNode has exited."""
    if ended := processes.exited():
        name, status = ended
        raise ClientFailure(
            f"{name} exited with status {status} (its log: {processes.log_dir / name}.log)"
        )
