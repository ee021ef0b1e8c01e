"""Flower's own CLI (`flwr run`, `flwr ls`, ...) driven as a user would, in a home of its own.

Each `FlowerHome` has its own `FLWR_HOME`, `HOME` and local SuperLink ports, so a test never
touches the user's Flower configuration or a SuperLink already running; on exit it stops
every process of the local SuperLink's session that `flwr run` started in the background.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import PROJECT_ROOT

from fedavg_mnist.ops.deployment import toml_value


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sessions_of(pattern: str) -> set[int]:
    """Session IDs of the processes whose command line matches `pattern`."""
    sessions = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if re.search(pattern, cmdline):
                sessions.add(int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]))
        except (OSError, ValueError, IndexError):
            continue
    return sessions


def processes_in_sessions(sessions: set[int]) -> list[int]:
    """PIDs of the live processes in any of `sessions`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in sessions and fields[0] != "Z":
            pids.append(int(proc.name))
    return pids


def kill_sessions(sessions: set[int], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, every process of the given sessions."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_in_sessions(sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while processes_in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not processes_in_sessions(sessions):
            return


class FlowerHome:
    """A Flower configuration of its own, and the `flwr` commands run against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.http_port, self.control_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "FLWR_HOME": str(root / "flwr-home"),
            # run the app in this environment, not one `uv sync` builds per run
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
        }

    def flwr(
        self, *args: str, timeout: float = 600, cwd: Path = PROJECT_ROOT
    ) -> subprocess.CompletedProcess[str]:
        """Run one `flwr` command."""
        return subprocess.run(
            ["flwr", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(self, run_config: dict[str, Any], federation_config: str) -> int:
        """`flwr run .` with these settings; return the run ID without waiting for the run."""
        pairs = [f"{key}={toml_value(value)}" for key, value in run_config.items()]
        result = self.flwr(
            "run", ".", "--run-config", " ".join(pairs), "--federation-config", federation_config
        )
        match = re.search(r"Successfully started run (\d+)", result.stdout)
        assert result.returncode == 0 and match, result.stdout + result.stderr
        return int(match.group(1))

    def statuses(self) -> dict[int, str]:
        """Each run's status as `flwr ls --format json` reports it."""
        listing = self.flwr("ls", "--format", "json")
        return {
            int(run["run-id"]): str(run["status"]) for run in json.loads(listing.stdout)["runs"]
        }

    def wait(self, run_ids: list[int], timeout: float = 240) -> dict[int, str]:
        """Wait until the runs have finished; return their statuses."""
        deadline = time.monotonic() + timeout
        pause = 2.0
        while True:
            statuses = {run_id: self.statuses()[run_id] for run_id in run_ids}
            if all(status.startswith("finished") for status in statuses.values()):
                return statuses
            assert time.monotonic() < deadline, statuses
            # each `flwr ls` costs a second or two of the CPU the run needs: a long run is
            # asked less often
            time.sleep(pause)
            pause = min(pause * 1.5, 10.0)

    def log(self, run_id: int, until: str, timeout: float = 60) -> str:
        """The run's log (`flwr log --show`), once it holds `until` (logs arrive late)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.flwr("log", str(run_id), "--show")
            log = result.stdout + result.stderr
            if until in log or time.monotonic() > deadline:
                return log
            time.sleep(1.0)

    def stop(self) -> None:
        """Stop the local SuperLink `flwr` started for this home, and all it started."""
        kill_sessions(sessions_of(rf"flower-superlink .*--port {self.http_port}\b"))
