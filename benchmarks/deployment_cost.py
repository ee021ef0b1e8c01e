"""What a round costs on a real Flower deployment against the simulation, same settings.

    python -m benchmarks.deployment_cost [--supernodes 4] [--rounds 4] [--out deployment.json]

Runs the same 2NN experiment (K = N clients, C=0.5, E=1, B=10) twice through the project's
own commands: `python -m fedavg_mnist.ops.deployment` (a SuperLink and N SuperNodes as separate
processes over TLS; Flower starts a `flwr-clientapp` process for every message a SuperNode
gets) and the Hydra CLI's simulation. Reports each one's median round time (training and
evaluation, rounds 1 onwards), the median of the training part alone, the whole command's
wall time, and that both histories are the same. Needs MNIST (`--data-root`, default
`$FEDAVG_MNIST_DATA`).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.round_time import machine
from fedavg_mnist.records import library_versions, load_results
from fedavg_mnist.storage import write_json_atomic


def settings(supernodes: int, rounds: int) -> dict[str, object]:
    """Return the experiment both paths run, in the keys `--run-config` and Hydra share."""
    return {
        "model.name": "mlp",
        "num_clients": supernodes,
        "client_fraction": 0.5,
        "local_epochs": 1,
        "batch_size": 10,
        "num_rounds": rounds,
    }


def timed(command: list[str]) -> float:
    """Run `command` (failing loudly if it fails) and return its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:  # the command's own one-line reason
        reason = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        sys.exit(f"error: {command[2]} failed: {reason.removeprefix('error: ')}")
    return time.perf_counter() - started


def round_figures(run_dir: Path) -> dict[str, Any]:
    """Median round time and its training part over rounds 1 onwards, and the history."""
    history = load_results(run_dir / "results.json")["history"]
    rounds = [entry for entry in history if entry["round"] >= 1]
    return {
        "round_seconds": statistics.median(entry["seconds"] for entry in rounds),
        "train_seconds": statistics.median(
            entry["seconds"] - entry["eval_seconds"] for entry in rounds
        ),
        "history": [(entry["round"], entry["accuracy"]) for entry in history],
    }


def main() -> None:
    """Run both paths and write the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-root", default=os.environ.get("FEDAVG_MNIST_DATA", "data"))
    parser.add_argument("--out", type=Path, default=Path("deployment.json"))
    args = parser.parse_args()
    data_root = str(Path(args.data_root).resolve())
    experiment = settings(args.supernodes, args.rounds)
    with tempfile.TemporaryDirectory() as scratch:
        deployed, simulated = Path(scratch, "deployment"), Path(scratch, "simulation")
        run_config = " ".join(f"{key}={value!r}" for key, value in experiment.items())
        deployment_wall = timed(
            [sys.executable, "-m", "fedavg_mnist.ops.deployment", "--supernodes",
             str(args.supernodes), "--data-root", data_root, "--output-dir", str(deployed),
             "--run-config", run_config]
        )  # fmt: skip
        overrides = [f"{key}={value}" for key, value in experiment.items()]
        simulation_wall = timed(
            [sys.executable, "-m", "fedavg_mnist.main", *overrides, f"dataset.root={data_root}",
             f"hydra.run.dir={simulated}"]
        )  # fmt: skip
        deployment, simulation = round_figures(deployed), round_figures(simulated)
    figures = {
        "machine": machine(),
        "versions": library_versions(),
        "settings": experiment,
        "deployment": {**deployment, "command_seconds": deployment_wall},
        "simulation": {**simulation, "command_seconds": simulation_wall},
        "round_ratio": deployment["round_seconds"] / simulation["round_seconds"],
        "same_history": deployment["history"] == simulation["history"],
    }
    write_json_atomic(args.out, figures)
    for path in ("deployment", "simulation"):
        figure = figures[path]
        print(
            f"{path}: round {figure['round_seconds']:.2f} s (training "
            f"{figure['train_seconds']:.2f} s), command {figure['command_seconds']:.0f} s"
        )
    print(f"deployment/simulation per round: {figures['round_ratio']:.1f}x; "
          f"same history: {figures['same_history']}")  # fmt: skip


if __name__ == "__main__":
    main()
