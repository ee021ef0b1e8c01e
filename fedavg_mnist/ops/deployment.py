"""A real Flower deployment on this machine: a SuperLink and N SuperNodes, one run, then stop.

    python -m fedavg_mnist.ops.deployment [--supernodes 4] [--run-config "num_rounds=2 ..."]
        [--output-dir DIR] [--data-root DIR] [--certificates DIR] [--insecure]

Each part is its own process talking over Flower's HTTP APIs, as on real devices: one
`flower-superlink` (TLS with a CA made for the run, or the user's certificates, and
SuperNode authentication: only the N keys registered get in), N `flower-supernode`s, the
i-th with `--node-config "partition-id=i num-partitions=N"`, so it trains on partition i
only, and `flwr run . <connection>` in a Flower home of the deployment's own. The command
waits for the run, prints its summary, and stops every process it started, also on Ctrl-C
and on failure; a SuperLink or SuperNode that exits, or a run that fails, ends it at once
with one `error:` line. `--insecure` (no TLS, no authentication) is refused off loopback.
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from queue import Empty, Queue

from fedavg_mnist.errors import ClientFailure, UserError
from fedavg_mnist.ops.certificates import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    check_tls_certificates,
    make_supernode_key,
    make_tls_certificates,
)
from fedavg_mnist.ops.processes import (
    Processes,
    check_alive,
    environment_path,
    flower_executable,
    free_port,
    wait_for_port,
)
from fedavg_mnist.records import RESULTS_FILE
from fedavg_mnist.settings import parse

APP_DIR = Path(__file__).resolve().parents[2]  # the Flower app: pyproject.toml's folder
CONNECTION = "fedavg-deployment"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FLOWER_INFO = re.compile(r"^(\x1b\[\d+m)?INFO\b")  # Flower's INFO lines, left out of our output


def toml_value(value: bool | int | float | str) -> str:
    """Return a setting as a TOML value, as `--run-config` parses it (B=∞: `inf`)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return json.dumps(value)


def flower_config(address: str, ca_cert: Path | None) -> str:
    """Return the `$FLWR_HOME/config.toml` naming this deployment's SuperLink as the default."""
    security = f'root-certificates = "{ca_cert}"' if ca_cert else "insecure = true"
    return (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n'
    )


def flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one `flwr` command against the deployment's Flower home."""
    command = [flower_executable("flwr"), *args]
    return subprocess.run(command, env=env, cwd=APP_DIR, capture_output=True, text=True)


def register_keys(env: dict[str, str], public_keys: list[Path]) -> None:
    """Register the SuperNodes' public keys with the SuperLink (all at once)."""
    commands = [
        [flower_executable("flwr"), "supernode", "register", str(key), CONNECTION]
        + ["--format", "json"]
        for key in public_keys
    ]
    running = [
        subprocess.Popen(c, env=env, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    for key, process in zip(public_keys, running, strict=True):
        output = process.communicate()[0].decode(errors="replace")
        if process.returncode != 0 or '"success": true' not in output:
            raise ClientFailure(f"registering {key.name} failed: {output.strip().splitlines()[-1]}")


def run_status(env: dict[str, str], run_id: int) -> dict[str, str]:
    """Return the run's entry in `flwr ls --run-id ... --format json`."""
    listing = flwr(env, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
    runs = json.loads(listing.stdout).get("runs", [])
    return {str(k): str(v) for k, v in runs[0].items()} if runs else {}


def run_config_for(user_config: str, num_supernodes: int, output_dir: Path, data_root: Path) -> str:
    """Return the run's `--run-config`: the user's, plus K, its output and MNIST folders."""
    from flwr.common.config import parse_config_args

    try:
        settings = parse_config_args([user_config]) if user_config.strip() else {}
    except Exception as err:  # Flower's parser raises several kinds for malformed TOML
        raise UserError(f"invalid --run-config: {err}".splitlines()[0]) from err
    derived = {"num_clients": num_supernodes, "output_dir": str(output_dir)}
    derived["dataset.root"] = str(data_root)
    for key, value in derived.items():
        if key in settings and settings[key] != value and key != "dataset.root":
            raise UserError(
                f"--run-config {key}={settings[key]}: the deployment sets {key}={value} "
                "(use --supernodes and --output-dir)"
            )
    merged = {**derived, **settings}
    parse(merged)  # bad settings end here, before anything starts
    return " ".join(f"{key}={toml_value(value)}" for key, value in merged.items())


def supernode_command(
    index: int, num: int, superlink: str, host: str, key: Path | None, ca_cert: Path | None
) -> list[str]:
    """`flower-supernode` for partition `index` of `num`, TLS and key, or `--insecure`."""
    command = [
        flower_executable("flower-supernode"),
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(free_port(host)),
        "--node-config",
        f"partition-id={index} num-partitions={num}",
    ]
    if ca_cert is None or key is None:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", str(ca_cert), "--auth-supernode-private-key", str(key)]


def follow_run(env: dict[str, str], run_config: str, processes: Processes) -> int:
    """`flwr run . <connection> --stream`, its output shown, the deployment watched; run ID."""
    command = [flower_executable("flwr"), "run", ".", CONNECTION, "--run-config", run_config]
    command += ["--stream"]
    stream = subprocess.Popen(
        command, env=env, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: Queue[str] = Queue()

    def read() -> None:
        for line in stream.stdout or []:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run_id, last = None, ""
    try:
        while reader.is_alive() or not lines.empty():
            check_alive(processes)
            try:
                line = lines.get(timeout=0.2).rstrip("\n")
            except Empty:
                continue
            if match := re.search(r"Successfully started run (\d+)", line):
                run_id = int(match.group(1))
            elif line.strip() and not FLOWER_INFO.match(line):
                last = line
                print(line, flush=True)
    finally:
        if stream.poll() is None:
            stream.kill()
        reader.join()
    if run_id is None:
        raise ClientFailure(f"flwr run did not start the run: {last.strip() or 'no output'}")
    return run_id


def deploy(args: argparse.Namespace) -> Path:
    """Start the deployment, run the experiment, stop everything; return the results file."""
    host = args.host
    if args.insecure and host not in LOOPBACK:
        raise UserError(
            f"--insecure sends models unencrypted: allowed on loopback only, not {host}"
        )
    if args.supernodes < 1:
        raise UserError("--supernodes must be >= 1")
    started = datetime.now()
    output_dir = Path(
        args.output_dir or f"outputs/deployment/{started:%Y-%m-%d}/{started:%H-%M-%S}"
    ).resolve()
    if (output_dir / RESULTS_FILE).exists():
        raise UserError(f"{output_dir / RESULTS_FILE} already exists: choose another --output-dir")
    data_root = Path(args.data_root or os.environ.get("FEDAVG_MNIST_DATA", "data")).resolve()
    run_config = run_config_for(args.run_config, args.supernodes, output_dir, data_root)
    for name in ("flwr", "flower-superlink", "flower-supernode"):
        flower_executable(name)  # all there before anything is written or started
    work = output_dir / "deployment"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": environment_path(),
        "FLWR_HOME": str(work / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the apps run in this environment
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    certs = Path(args.certificates).resolve() if args.certificates else work / "certs"
    if args.certificates:
        check_tls_certificates(certs)
    elif not args.insecure:
        make_tls_certificates(certs, [host])
    ca_cert = None if args.insecure else certs / CA_CERT
    port = free_port(host)
    (work / "flwr-home").mkdir(exist_ok=True)
    (work / "flwr-home" / "config.toml").write_text(flower_config(f"{host}:{port}", ca_cert))
    superlink = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    superlink += ["--disable-runtime-dependency-installation"]
    if ca_cert is None:
        superlink += ["--insecure"]
    else:
        superlink += ["--ssl-ca-certfile", str(ca_cert), "--ssl-certfile", str(certs / SERVER_CERT)]
        superlink += ["--ssl-keyfile", str(certs / SERVER_KEY), "--enable-supernode-auth"]
    security = "insecure (no TLS, no SuperNode authentication)" if ca_cert is None else "TLS"
    processes = Processes(work / "logs", env, APP_DIR)
    try:
        processes.start("superlink", superlink)
        wait_for_port(host, port, processes)
        print(f"SuperLink on {host}:{port}, {security}; logs in {work / 'logs'}", flush=True)
        keys: list[Path | None] = [None] * args.supernodes
        if ca_cert is not None:
            pairs = [make_supernode_key(work, f"supernode_{i}") for i in range(args.supernodes)]
            register_keys(env, [public for _, public in pairs])
            keys = [private for private, _ in pairs]
        for index, key in enumerate(keys):
            command = supernode_command(
                index, args.supernodes, f"{host}:{port}", host, key, ca_cert
            )
            processes.start(f"supernode_{index}", command)
        print(f"{args.supernodes} SuperNodes started; results: {output_dir}", flush=True)
        run_id = follow_run(env, run_config, processes)
        status = run_status(env, run_id)
        if status.get("status") != "finished:completed":
            details = status.get("status-details", "")
            raise ClientFailure(f"run {run_id} ended {status.get('status')}: {details}")
        if not (output_dir / RESULTS_FILE).is_file():
            raise ClientFailure(f"run {run_id} completed without writing {output_dir}")
    finally:
        processes.stop()
        if not args.certificates:
            for private in [*work.glob("supernode_*"), certs / SERVER_KEY]:
                private.unlink(missing_ok=True)  # keys made for this run only
    return output_dir / RESULTS_FILE


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: deploy, run, report; one `error:` line and a non-zero status on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m fedavg_mnist.ops.deployment", description=__doc__
    )
    parser.add_argument("--supernodes", type=int, default=4, help="N SuperNodes, K = N")
    parser.add_argument("--run-config", default="", help="as `flwr run --run-config`")
    parser.add_argument("--output-dir", help="default: outputs/deployment/<date>/<time>")
    parser.add_argument("--data-root", help="MNIST root (default: $FEDAVG_MNIST_DATA or data)")
    parser.add_argument("--host", default="127.0.0.1", help="the SuperLink's address")
    parser.add_argument("--certificates", help=f"a folder with {CA_CERT}, {SERVER_CERT}, ...")
    parser.add_argument("--insecure", action="store_true", help="no TLS (loopback only)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # stop what was started, as on Ctrl-C
    try:
        results = deploy(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except ClientFailure as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as err:
        how = " (SIGTERM)" if isinstance(err, Terminated) else ""
        print(f"error: interrupted{how}; the deployment is stopped", file=sys.stderr, flush=True)
        return 143 if how else 130
    print(f"deployment stopped; results: {results}", flush=True)  # the summary came with the log
    return 0


if __name__ == "__main__":
    sys.exit(main())
