"""Round-time benchmark: Flower's path against the compute floor, evaluation, start-up.

    python -m benchmarks.round_time [--rounds 4] [--out bench.json] [--models cnn mlp]
                                 [--precision fp32|bf16]

For each model with C=0.1, E=5, B=10 and with FedSGD (E=1, B=∞), in one process:
- the compute floor: the same 10 client updates (the project's `train_local`) with no
  Flower, the faster of (a) this process using every core and (b) one single-threaded
  process per core, each taking its share of the clients; on a GPU (`device=auto` finds
  one), (a) alone: this process training the clients one after another on the GPU;
- the project's path: the same rounds through Flower's simulation as `main` runs them
  (training time per round = round time - evaluation time);
- centralized evaluation of the 10,000 test images, and start-up to the first round (from
  launch to round 0 evaluated: the data, the partitions, Ray, its actors, round 0).
Then Flower's fixed cost per round on the smallest round the paper runs thousands of
(2NN, C=0, E=1, B=∞: one client, one full-batch step). Figures are medians over rounds.
"""

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedavg_mnist.client_app import partition_data
from fedavg_mnist.config import RunConfig, num_sampled_clients
from fedavg_mnist.errors import UserError
from fedavg_mnist.local_training import train_local
from fedavg_mnist.machine import cpu_model
from fedavg_mnist.models import autocast, build_model, place_model, resolve_device
from fedavg_mnist.partitions import clear_caches
from fedavg_mnist.records import library_versions, load_results
from fedavg_mnist.storage import write_json_atomic


@dataclass(frozen=True)
class Setting:
    """A benchmarked configuration."""

    name: str
    model: str
    client_fraction: float
    local_epochs: int
    batch_size: int | None

    def overrides(self) -> list[str]:
        """Hydra overrides for this setting."""
        batch = "null" if self.batch_size is None else str(self.batch_size)
        return [
            f"model={self.model}",
            f"client_fraction={self.client_fraction}",
            f"local_epochs={self.local_epochs}",
            f"batch_size={batch}",
        ]


def compose_config(root: str, output_dir: Path, overrides: Sequence[str]) -> RunConfig:
    """Compose the run config `main` would build for these overrides."""
    from fedavg_mnist.overrides import compose_run_config

    return compose_run_config([*overrides, f"dataset.root={root}"], str(output_dir))


# One single-threaded worker process per core: each loads the data once, then trains its
# share of a round's clients on request.
_worker: dict[str, Any] = {}


def _init_worker(cfg: RunConfig) -> None:
    torch.set_num_threads(1)
    _worker["cfg"] = cfg
    _worker["clients"] = client_tensors(cfg)
    _worker["model"] = place_model(build_model(cfg.model.name), "cpu")


def _train_clients(job: tuple[dict[str, torch.Tensor], list[int]]) -> float:
    state, partition_ids = job
    started = time.perf_counter()
    train_clients(_worker["cfg"], _worker["clients"], _worker["model"], state, partition_ids)
    return time.perf_counter() - started


ClientTensors = dict[int, tuple[torch.Tensor, torch.Tensor]]


def client_tensors(cfg: RunConfig) -> ClientTensors:
    """Return each sampled client's images and labels on the run's device, as clients hold them."""
    num_clients = num_sampled_clients(cfg.client_fraction, cfg.num_clients)
    return {partition_id: partition_data(cfg, partition_id) for partition_id in range(num_clients)}


def train_clients(
    cfg: RunConfig,
    clients: ClientTensors,
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    partition_ids: Sequence[int],
) -> None:
    """Train each client in turn from `state`, as the `ClientApp` does (no Flower)."""
    for partition_id in partition_ids:
        images, labels = clients[partition_id]
        model.load_state_dict(state)
        generator = torch.Generator().manual_seed(partition_id)
        with autocast(cfg.precision, images.device):
            train_local(model, images, labels, cfg.local_epochs, cfg.batch_size, cfg.lr, generator)


def _time_rounds(
    cfg: RunConfig,
    clients: ClientTensors,
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    rounds: int,
) -> float:
    """Median seconds of `rounds` rounds of every client trained in this process."""
    partition_ids = sorted(clients)
    train_clients(cfg, clients, model, state, partition_ids[:1])  # warm-up
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        train_clients(cfg, clients, model, state, partition_ids)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


@dataclass(frozen=True)
class Floor:
    """Median seconds of one round's client updates without Flower."""

    one_process_all_cores_s: float  # on a GPU: this process on the GPU
    one_process_per_core_s: float | None  # CPU only

    @property
    def floor_s(self) -> float:
        """The faster of the two ways."""
        ways = (self.one_process_all_cores_s, self.one_process_per_core_s)
        return min(seconds for seconds in ways if seconds is not None)


def compute_floor(cfg: RunConfig, rounds: int) -> Floor:
    """Time one round's client updates without Flower, each way this device allows."""
    device = resolve_device(cfg.device)
    state = build_model(cfg.model.name).state_dict()
    clients = client_tensors(cfg)
    model = place_model(build_model(cfg.model.name), device)
    if device.type == "cuda":
        return Floor(_time_rounds(cfg, clients, model, state, rounds), None)

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    one_process = _time_rounds(cfg, clients, model, state, rounds)
    torch.set_num_threads(threads)

    partition_ids = sorted(clients)
    workers = min(cores, len(partition_ids))
    shares = [partition_ids[index::workers] for index in range(workers)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pool.map(_train_clients, [(state, share[:1]) for share in shares])  # warm-up
        per_core = []
        for _ in range(rounds):
            started = time.perf_counter()
            pool.map(_train_clients, [(state, share) for share in shares])
            per_core.append(time.perf_counter() - started)
    return Floor(one_process, statistics.median(per_core))


def flower_rounds(cfg: RunConfig) -> dict[str, Any]:
    """Run `cfg` through `main`'s Flower simulation; return its per-round figures."""
    from fedavg_mnist.main import run

    clear_caches()  # load the data and build the partitions as a fresh `main` does
    launched = time.time()
    run(cfg)
    history = load_results(cfg.output_dir)["history"]
    steady = [r for r in history if r["round"] >= 2] or [r for r in history if r["round"] >= 1]
    return {
        "startup_s": history[0]["time"] - launched,
        "round_s": statistics.median(r["seconds"] for r in steady),
        "eval_s": statistics.median(r["eval_seconds"] for r in history),
        "rounds": len(history) - 1,
    }


def bench_setting(
    setting: Setting, root: str, work: Path, rounds: int, precision: str = "fp32"
) -> dict[str, Any]:
    """Floor and Flower figures of one setting."""
    cfg = compose_config(
        root,
        work / setting.name,
        [*setting.overrides(), f"num_rounds={rounds + 1}", f"precision={precision}"],
    )
    floor = compute_floor(cfg, rounds)
    flower = flower_rounds(cfg)
    return {
        "setting": setting.__dict__,
        **asdict(floor),
        "floor_s": floor.floor_s,
        **{f"flower_{key}": value for key, value in flower.items()},
        # a round evaluates the previous model while it trains: against doing both in turn
        "flower_over_floor": flower["round_s"] / (floor.floor_s + flower["eval_s"]),
    }


def fixed_cost(root: str, work: Path, rounds: int) -> dict[str, float]:
    """Time the smallest round (2NN, C=0, E=1, B=∞) against its compute and evaluation."""
    setting = Setting("fixed_cost", "mlp", 0.0, 1, None)
    cfg = compose_config(root, work / "fixed_cost", [*setting.overrides(), f"num_rounds={rounds}"])
    floor = compute_floor(cfg, 5)
    flower = flower_rounds(cfg)
    return {
        "client_compute_ms": 1000 * floor.floor_s,
        "round_ms": 1000 * flower["round_s"],
        "eval_ms": 1000 * flower["eval_s"],
        # what a round costs beyond the longer of the two, which it overlaps
        "fixed_cost_ms": 1000 * (flower["round_s"] - max(floor.floor_s, flower["eval_s"])),
    }


SETTINGS = {
    "cnn": [Setting("cnn_E5_B10", "cnn", 0.1, 5, 10), Setting("cnn_fedsgd", "cnn", 0.1, 1, None)],
    "mlp": [Setting("mlp_E5_B10", "mlp", 0.1, 5, 10), Setting("mlp_fedsgd", "mlp", 0.1, 1, None)],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.round_time", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds per setting (>= 3)")
    parser.add_argument("--fixed-cost-rounds", type=int, default=60)
    parser.add_argument("--models", nargs="+", choices=sorted(SETTINGS), default=["cnn", "mlp"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--data-root", default=os.environ.get("FEDAVG_MNIST_DATA", "data"))
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    if args.rounds < 3:
        print("error: --rounds must be >= 3 (figures are medians)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": library_versions(),
        "command": " ".join(["python -m benchmarks.round_time", *(argv or sys.argv[1:])]),
        "precision": args.precision,
        "settings": [],
        "fixed_cost": None,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="fedavg-bench-") as work:
            for setting in [s for model in args.models for s in SETTINGS[model]]:
                row = bench_setting(
                    setting, args.data_root, Path(work), args.rounds, args.precision
                )
                report["settings"].append(row)
                write_json_atomic(args.out, report)  # a stopped benchmark keeps what it measured
            report["fixed_cost"] = fixed_cost(args.data_root, Path(work), args.fixed_cost_rounds)
        write_json_atomic(args.out, report)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {args.out}")
    return 0


def machine() -> dict[str, Any]:
    """Describe where the figures were measured: CPU, cores, platform and GPU (None without)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "gpu": gpu,
    }


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """Format the benchmark as a Markdown table."""
    lines = [
        "| setting | floor: 1 proc (s) | floor: 1 proc/core (s) | Flower round (s) "
        "| round/(floor+eval) | eval (s) | start-up (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["settings"]:
        lines.append(
            f"| {row['setting']['name']} | {row['one_process_all_cores_s']:.3f} "
            f"| {_seconds(row['one_process_per_core_s'])} | {row['flower_round_s']:.3f} "
            f"| {row['flower_over_floor']:.2f} | {row['flower_eval_s']:.3f} "
            f"| {row['flower_startup_s']:.1f} |"
        )
    fixed = report["fixed_cost"]
    if fixed is None:
        return "\n".join(lines)
    lines.append(
        f"\n2NN C=0 E=1 B=∞: round {fixed['round_ms']:.0f} ms; client compute "
        f"{fixed['client_compute_ms']:.0f} ms and evaluation {fixed['eval_ms']:.0f} ms overlap; "
        f"{fixed['fixed_cost_ms']:.0f} ms beyond the longer of them"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
