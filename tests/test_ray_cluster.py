"""The simulation on a Ray cluster: a head and a second node started with `ray start`."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, tiny_overrides
from flower import free_port, kill_sessions, processes_in_sessions

pytestmark = pytest.mark.slow  # starts a Ray cluster and the CLI


def _ray_start(*args: str) -> subprocess.Popen[bytes]:
    """`ray start ... --block` in a session of its own, so the test stops just this cluster."""
    return subprocess.Popen(
        ["ray", "start", "--num-cpus=1", "--disable-usage-stats", "--block", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _nodes_alive(address: str) -> int:
    script = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
    )
    return int(result.stdout.split()[-1]) if result.returncode == 0 else 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and a second node on loopback, one CPU each; stopped afterwards."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_start("--head", f"--port={port}", "--node-ip-address=127.0.0.1")
    started = [head]
    try:
        deadline = time.monotonic() + 120
        while _nodes_alive(address) < 1:
            assert time.monotonic() < deadline and head.poll() is None, "the head did not start"
        started.append(_ray_start(f"--address={address}", "--node-ip-address=127.0.0.1"))
        while _nodes_alive(address) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
        yield address
    finally:
        sessions = {process.pid for process in started}
        kill_sessions(sessions)
        assert not processes_in_sessions(sessions)


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _history(document: dict) -> list[tuple[int, float, float]]:
    return [(r["round"], r["accuracy"], r["loss"]) for r in document["history"]]


def test_a_run_joins_the_cluster_when_asked_and_stays_local_otherwise(
    cluster: str, synthetic_root: Path, tmp_path: Path
) -> None:
    local, attached = tmp_path / "local", tmp_path / "attached"
    assert run_cli(*tiny_overrides(synthetic_root, local)).returncode == 0  # beside the cluster
    result = run_cli(*tiny_overrides(synthetic_root, attached), env={"RAY_ADDRESS": cluster})
    assert result.returncode == 0, result.stderr
    on_cluster, on_own = _results(attached), _results(local)
    assert len(on_cluster["ray_nodes"]) == 2  # the clients trained on both nodes
    assert len(on_own["ray_nodes"]) == 1 and on_own["ray_nodes"][0] not in on_cluster["ray_nodes"]
    assert _history(on_cluster) == _history(on_own)


def test_a_cluster_that_cannot_host_the_clients_ends_the_run_at_once(
    cluster: str, synthetic_root: Path, tmp_path: Path
) -> None:
    """Clients of 2 CPUs on nodes of 1: Flower has no actor to run them on."""
    started = time.monotonic()
    result = run_cli(
        *tiny_overrides(synthetic_root, tmp_path / "run", "client_resources.num_cpus=2"),
        env={"RAY_ADDRESS": cluster},
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the simulation failed: ActorPool is empty"
    )
