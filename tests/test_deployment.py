"""A real SuperLink and SuperNodes on loopback, with TLS and SuperNode authentication."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TinyRun, finished_history, run_cli, tiny_overrides
from flower import free_port, kill_sessions, processes_in_sessions, sessions_of

from fedavg_mnist.ops.certificates import make_supernode_key
from fedavg_mnist.ops.processes import Processes, descendants, is_alive

pytestmark = pytest.mark.slow  # starts SuperLinks and SuperNodes

TINY_RUN_CONFIG = (
    "model.name='mlp' client_fraction=0.5 local_epochs=1 batch_size=10 num_rounds={rounds} "
    "dataset.download=false dataset.verify_checksums=false"
)


# a strategy other than the default, whose setting the ClientApp must receive (FedProx's μ
# changes the clients' local loss): the deployment carries it as the simulation does
FEDPROX = ("strategy.name='fedprox'", "strategy.proximal_mu=0.5")


def _deploy(
    data_root: Path, output_dir: Path, rounds: int, *run_config: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedavg_mnist.ops.deployment",
            "--supernodes",
            "4",
            "--run-config",
            " ".join([TINY_RUN_CONFIG.format(rounds=rounds), *run_config]),
            "--data-root",
            str(data_root),
            "--output-dir",
            str(output_dir),
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    """A deployment a failed test leaves behind: SIGTERM makes it stop what it started."""
    if process.poll() is None:
        process.terminate()
        process.wait(60)


def _read_until(process: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    for line in process.stdout or []:
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError("".join(seen))


def _left_behind(port: int) -> list[int]:
    """Processes of the deployment on this SuperLink port that are still alive."""
    return processes_in_sessions(
        sessions_of(rf"flower-(superlink|supernode) .*(--port|--superlink 127.0.0.1:){port}\b")
    )


def test_deployment_gives_the_simulations_history_and_lets_only_its_supernodes_in(
    tiny_run: TinyRun, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    deployed = tmp_path / "deployed"
    process = _deploy(tiny_run.data_root, deployed, 2, *FEDPROX)
    request.addfinalizer(lambda: _stop(process))
    seen: list[str] = []
    port = int(_read_until(process, r"SuperLink on 127.0.0.1:(\d+), TLS", seen).group(1))
    # a SuperNode whose key was not registered is turned away
    key, _ = make_supernode_key(tmp_path, "stranger")
    ca_cert = deployed / "deployment" / "certs" / "ca.crt"
    log = tmp_path / "stranger.log"
    with open(log, "w") as stream:
        stranger = subprocess.Popen(
            ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates"]
            + [str(ca_cert), "--auth-supernode-private-key", str(key)]
            + ["--port", str(free_port()), "--node-config", "partition-id=0 num-partitions=4"],
            env={**os.environ, "FLWR_HOME": str(tmp_path / "stranger-home")},
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert stranger.wait(timeout=120) != 0
    finally:
        kill_sessions({stranger.pid})
    assert "Failed to activate SuperNode" in log.read_text()

    output = "".join(seen) + process.communicate(timeout=900)[0]
    assert process.returncode == 0, output
    assert f"results: {deployed / 'results.json'}" in output
    simulated = tmp_path / "simulated"
    overrides = [o.replace("'", "") for o in FEDPROX]
    result = run_cli(*tiny_overrides(tiny_run.data_root, simulated), *overrides)
    assert result.returncode == 0, result.stderr
    assert finished_history(deployed) == finished_history(simulated)  # the simulation's
    assert finished_history(simulated) != finished_history(tiny_run.run_dir)  # μ counted
    assert json.loads((deployed / "results.json").read_text())["config"]["strategy"] == {
        **json.loads((tiny_run.run_dir / "results.json").read_text())["config"]["strategy"],
        "name": "fedprox",
        "proximal_mu": 0.5,
    }
    assert not _left_behind(port)
    assert not list((deployed / "deployment").glob("supernode_*[!b]"))  # private keys deleted


def test_a_supernode_killed_mid_run_ends_the_deployment_at_once(
    synthetic_root: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    process = _deploy(synthetic_root, tmp_path / "run", rounds=50)
    request.addfinalizer(lambda: _stop(process))
    seen: list[str] = []
    port = int(_read_until(process, r"SuperLink on 127.0.0.1:(\d+)", seen).group(1))
    _read_until(process, r"round\s+1\s+accuracy", seen)
    tree = descendants([process.pid])  # the SuperLink's flwr-serverapp, in a session of its own
    assert any(b"flwr-serverapp" in _command(pid) for pid, _ in tree)
    (victim,) = sessions_of(r"flower-supernode .*--node-config partition-id=2 ")
    os.killpg(victim, signal.SIGKILL)
    killed = time.monotonic()
    output = "".join(seen) + process.communicate(timeout=120)[0]
    assert time.monotonic() - killed < 15, output
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "supernode_2 exited" in errors[0], output
    assert "Traceback" not in output
    assert not _left_behind(port)
    assert not [pid for pid, started in tree if is_alive((pid, started))]


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _sleeps(process: tuple[int, int]) -> bool:
    """Whether the process runs `sleep` in a session of its own."""
    pid = process[0]
    return _command(pid).startswith(b"sleep") and pid in processes_in_sessions({pid})


def test_stop_ends_what_the_processes_started_in_sessions_of_their_own(tmp_path: Path) -> None:
    """A child that left its parent's session (as Flower's `flwr-serverapp` leaves the
    SuperLink's) is stopped with it, though the parent's session signal misses it."""
    processes = Processes(tmp_path, dict(os.environ), tmp_path)
    processes.start("parent", ["bash", "-c", "setsid sleep 300 & wait"])
    deadline = time.monotonic() + 10
    while not (child := [p for p in descendants([processes.named[0][1].pid]) if _sleeps(p)]):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    processes.stop()
    assert processes.exited() is not None
    assert not is_alive(child[0])


def test_insecure_is_refused_off_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedavg_mnist.ops.deployment", "--insecure", "--host", "0.0.0.0"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --insecure sends models unencrypted: allowed on loopback only, not 0.0.0.0"
    )
