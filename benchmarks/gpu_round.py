"""Where a CNN round's time goes on a GPU: launches, kernels, clients at once.

    FEDAVG_MNIST_DATA=<root> python -m benchmarks.gpu_round [--out gpu_round.json]

For C=0.1 (10 clients) with E=5 B=10, E=20 B=10 and FedSGD, without Flower:
- the floor of one process training the round's clients one after another, eagerly
  (`train_local`) and replaying a captured epoch (`train_local_graphed`);
- the GPU's own time per SGD step (CUDA events around graph replays): what is left once
  launches cost nothing;
- the round's clients split over 1, 4 or 10 processes training at once on the one GPU
  (Flower's actors with `client_resources.num_gpus` 1, 0.25 or 0.1), graphed.
Figures are medians over rounds. `--device cpu` runs the eager parts alone, to check the
script where there is no GPU.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks.round_time import ClientTensors, client_tensors, compose_config
from fedavg_mnist.config import RunConfig
from fedavg_mnist.local_training import (
    GraphedEpoch,
    Trainer,
    local_trainer,
    train_local,
    train_local_graphed,
)
from fedavg_mnist.machine import machine_description
from fedavg_mnist.models import build_model, place_model
from fedavg_mnist.records import library_versions
from fedavg_mnist.storage import write_json_atomic

SETTINGS = {
    "cnn_E5_B10": ["local_epochs=5", "batch_size=10"],
    "cnn_E20_B10": ["local_epochs=20", "batch_size=10"],
    "cnn_fedsgd": ["local_epochs=1", "batch_size=null"],
}
PROCESSES = (4, 10)  # 1: the graphed floor


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _round(
    cfg: RunConfig, clients: ClientTensors, model: torch.nn.Module, trainer: Trainer
) -> float:
    """Seconds to train `clients` one after another from the same weights."""
    state = {key: value.clone() for key, value in model.state_dict().items()}
    _sync()
    started = time.perf_counter()
    for partition_id, (images, labels) in clients.items():
        model.load_state_dict(state)
        generator = torch.Generator().manual_seed(partition_id)
        trainer(model, images, labels, cfg.local_epochs, cfg.batch_size, cfg.lr, generator)
    _sync()
    return time.perf_counter() - started


def floor_s(cfg: RunConfig, clients: ClientTensors, trainer: Trainer, rounds: int) -> float:
    """Median seconds of a round in this process (after one warm-up client)."""
    model = place_model(build_model(cfg.model.name), cfg.device)
    first = dict(list(clients.items())[:1])
    _round(cfg, first, model, trainer)
    return statistics.median(_round(cfg, clients, model, trainer) for _ in range(rounds))


def gpu_step_ms(cfg: RunConfig, clients: ClientTensors, replays: int = 20) -> float:
    """Milliseconds of GPU time per SGD step, from CUDA events around epoch replays."""
    images, labels = next(iter(clients.values()))
    model = place_model(build_model(cfg.model.name), "cuda")
    epoch = GraphedEpoch(model, images, cfg.batch_size, cfg.lr)
    epoch.images.copy_(images)
    epoch.labels.copy_(labels)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    epoch.graph.replay()
    start.record()
    for _ in range(replays):
        epoch.graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (replays * epoch.num_steps)


def _worker(cfg: RunConfig, partition_ids: list[int], rounds: int, barrier: Any, out: Any) -> None:
    torch.set_num_threads(1)
    clients = {i: c for i, c in client_tensors(cfg).items() if i in partition_ids}
    model = place_model(build_model(cfg.model.name), cfg.device)
    trainer = local_trainer(torch.device(cfg.device), cuda_graphs=True)
    _round(cfg, dict(list(clients.items())[:1]), model, trainer)  # warm-up (and capture)
    for _ in range(rounds):
        barrier.wait()
        out.put(_round(cfg, clients, model, trainer))


def processes_s(cfg: RunConfig, processes: int, rounds: int = 3) -> float:
    """Median round time with the clients split over `processes` training at once."""
    num_clients = len(client_tensors(cfg))
    shares = [list(range(num_clients))[p::processes] for p in range(processes)]
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(cfg, share, rounds, barrier, out)) for share in shares
    ]
    for worker in workers:
        worker.start()
    times = [[out.get(timeout=300) for _ in workers] for _ in range(rounds)]
    for worker in workers:
        worker.join()
    return statistics.median(max(round_times) for round_times in times)


def measure(root: str, rounds: int, device: str, overrides: list[str]) -> dict[str, Any]:
    """Every figure of the module docstring, per setting."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, setting in SETTINGS.items():
            cfg = compose_config(
                root,
                Path(tmp),
                ["model=cnn", "client_fraction=0.1", f"device={device}", *setting, *overrides],
            )
            clients = client_tensors(cfg)
            cuda = device == "cuda"
            row: dict[str, Any] = {
                # eager B=10 is launch-bound: one round (E=5) is enough, E=20 is 4 of them
                "eager_floor_s": None
                if cfg.local_epochs > 5
                else floor_s(cfg, clients, train_local, 1 if cfg.batch_size else rounds),
                "graphed_floor_s": floor_s(cfg, clients, train_local_graphed, rounds)
                if cuda
                else None,
                "gpu_step_ms": gpu_step_ms(cfg, clients) if cuda else None,
                "processes_s": {str(n): processes_s(cfg, n) for n in PROCESSES}
                if name == "cnn_E5_B10"
                else {},
            }
            print(name, row, flush=True)
            figures[name] = row
    return figures


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu_round.json"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=os.environ.get("FEDAVG_MNIST_DATA", "data"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every setting")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (--device cpu checks the script without one)", file=sys.stderr)
        return 2
    document = {
        "machine": machine_description(),
        "versions": library_versions(),
        "settings": measure(args.root, args.rounds, args.device, args.overrides),
    }
    write_json_atomic(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
