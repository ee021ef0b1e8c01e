"""Memory benchmark: a whole run's proportional set size (PSS), per worker and in total.

    python -m benchmarks.memory [--models mlp cnn] [--fractions 0.1 1.0] [--rounds 3]
                                [--source DIR] [--label after] [--out memory.json]

Each setting is one run of the Hydra CLI (K=100, E=1, `--rounds` rounds) in a process of
its own; every `--interval` seconds the benchmark reads `/proc/<pid>/smaps_rollup` of that
process and all its descendants (the server, Ray's processes and its workers). PSS counts a
page shared by n processes as 1/n in each, so the sum over processes is the run's real
footprint; RSS counts shared pages (a memory-mapped MNIST, torch's libraries) in every
process. Reported: the peak of the sum, each process's peak, grouped as the server (the
CLI's process), the workers (Ray's `ClientAppActor`s) and Ray's own processes, and a
projection to more workers: the rest of the run plus n times a worker's peak.

`--source DIR` runs the CLI of another checkout of the project (`git worktree add DIR
<commit>`), which is how the figures before a change are taken.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedavg_mnist.machine import machine_description
from fedavg_mnist.records import library_versions, load_results
from fedavg_mnist.storage import write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = {"mlp": "10", "cnn": "50"}  # one client's batch, small enough for C=1.0 on 2 cores
PROJECTED_WORKERS = (16, 32, 64)


def pss_kib(pid: int) -> int | None:
    """Return the process's PSS in KiB, or None if it has gone (or cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def role(pid: int, root: int) -> str:
    """Name the process: `server` (the CLI's), `worker` (a client's Ray actor) or `ray`.

    Ray's own processes, idle workers included, are `ray`.
    """
    if pid == root:
        return "server"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "ray"
    return "worker" if "ClientAppActor" in command else "ray"


@dataclass
class Sampler:
    """Peak PSS of a process tree: of each process and of their sum."""

    root: int
    peak_total_kib: int = 0
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)

    def sample(self) -> None:
        """Read every process's PSS once; keep the peaks."""
        total = 0
        for pid in descendants(self.root):
            kib = pss_kib(pid)
            if kib is None:
                continue
            total += kib
            name, peak = self.peaks.get(pid, (role(pid, self.root), 0))
            if name == "ray" and role(pid, self.root) == "worker":
                name = "worker"  # an idle worker that has become a client's actor
            self.peaks[pid] = (name, max(peak, kib))
        self.peak_total_kib = max(self.peak_total_kib, total)


def measure(
    model: str, fraction: float, rounds: int, source: Path, data: str, interval: float
) -> dict[str, Any]:
    """Run one setting through the CLI of `source`; return its memory figures."""
    with tempfile.TemporaryDirectory() as work:
        run_dir = Path(work) / "run"
        overrides = [
            f"model={model}",
            "num_clients=100",
            f"client_fraction={fraction}",
            "local_epochs=1",
            f"batch_size={BATCH_SIZE[model]}",
            f"num_rounds={rounds}",
            "stop_at_target=false",
            f"dataset.root={data}",
            f"hydra.run.dir={run_dir}",
        ]
        env = {**os.environ, "PYTHONPATH": str(source)}  # Ray's workers inherit it
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "fedavg_mnist.main", *overrides],
            cwd=source,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        sampler = Sampler(process.pid)
        while process.poll() is None:
            sampler.sample()
            time.sleep(interval)
        stderr = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"{model} C={fraction} failed: {stderr.strip()[-2000:]}")
        history = [(r["round"], r["accuracy"], r["loss"]) for r in load_results(run_dir)["history"]]
    return summarize(sampler, time.monotonic() - started) | {
        "settings": {"model": model, "client_fraction": fraction, "overrides": overrides},
        "history": history,
    }


def summarize(sampler: Sampler, seconds: float) -> dict[str, Any]:
    """Peaks by role, in MiB, and the projection to more workers."""
    by_role: dict[str, list[int]] = {"server": [], "worker": [], "ray": []}
    for name, peak in sampler.peaks.values():
        by_role[name].append(peak)
    workers = by_role["worker"]
    worker_mib = statistics.median(workers) / 1024 if workers else 0.0
    total_mib = sampler.peak_total_kib / 1024
    rest_mib = total_mib - sum(workers) / 1024  # the server and Ray's processes
    return {
        "wall_s": round(seconds, 1),
        "peak_total_pss_mib": round(total_mib, 1),
        "server_peak_pss_mib": round(sum(by_role["server"]) / 1024, 1),
        "ray_peak_pss_mib": round(sum(by_role["ray"]) / 1024, 1),
        "workers": len(workers),
        "worker_peak_pss_mib": sorted(round(w / 1024, 1) for w in workers),
        "worker_median_peak_pss_mib": round(worker_mib, 1),
        "projected_total_pss_mib": {
            str(n): round(rest_mib + n * worker_mib, 1) for n in PROJECTED_WORKERS
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: measure each setting, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", type=Path, default=PROJECT_ROOT)
    parser.add_argument("--label", default="current")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--data", default=os.environ.get("FEDAVG_MNIST_DATA", "data"))
    parser.add_argument("--out", type=Path, default=Path("memory.json"))
    args = parser.parse_args(argv)
    source = args.source.resolve()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True
    ).stdout.strip()
    report: dict[str, Any] = {
        "label": args.label,
        "source_commit": commit,
        "machine": machine_description(),
        "versions": library_versions(),
        "results": [],
    }
    for model in args.models:
        for fraction in args.fractions:
            result = measure(model, fraction, args.rounds, source, args.data, args.interval)
            report["results"].append(result)
            write_json_atomic(args.out, report)  # a stopped benchmark keeps what it measured
            print(format_row(result), flush=True)
    print(f"wrote {args.out}")
    return 0


def format_row(result: dict[str, Any]) -> str:
    """One line of the table: setting, total, server, Ray, workers."""
    settings = result["settings"]
    return (
        f"{settings['model']:>4} C={settings['client_fraction']:<4} "
        f"total {result['peak_total_pss_mib']:7.1f} MiB  "
        f"server {result['server_peak_pss_mib']:6.1f}  ray {result['ray_peak_pss_mib']:6.1f}  "
        f"{result['workers']} workers "
        f"{result['worker_median_peak_pss_mib']:6.1f} each  ({result['wall_s']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
