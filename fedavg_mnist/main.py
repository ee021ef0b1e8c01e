"""Hydra entry point: `python -m fedavg_mnist.main [key=value ...]` runs one FedAvg simulation."""

import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig, OmegaConf

from fedavg_mnist.config import RunConfig, gpus_per_client
from fedavg_mnist.errors import ClientFailure, RunFailure, UserError
from fedavg_mnist.mnist import ensure_mnist
from fedavg_mnist.overrides import (
    check_overrides,
    named_run_dir,
    register_hydra_config,
    to_run_config,
)
from fedavg_mnist.run_dir import hold_run_dir


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM, Kubernetes, `timeout`), handled as Ctrl-C is."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def quiet_libraries(verbose: bool) -> dict[str, Any]:
    """Keep Flower's and Ray's logs out of the way unless `verbose`; return Ray's init args."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if verbose:
        return {}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger().setLevel(logging.WARNING)
    # Flower logs a failure with its traceback; the CLI says it in one line instead
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return {"logging_level": "error", "log_to_driver": False}


def parallel_jobs() -> int:
    """How many sweep points Hydra's launcher runs at once: its `n_jobs`, else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    n_jobs = OmegaConf.select(OmegaConf.structured(HydraConfig.get()), "launcher.n_jobs")
    return 1 if n_jobs is None else int(n_jobs)


def available_cpus() -> int:
    """Count the CPUs this process may run on (a SLURM job's, a `taskset`'s, or all)."""
    return len(os.sched_getaffinity(0))


def cpu_share(jobs: int) -> int:
    """Return the CPUs one run may use when `jobs` runs share them (joblib's -1: one each)."""
    return 1 if jobs < 0 else max(available_cpus() // max(jobs, 1), 1)


def run(config: RunConfig) -> None:
    """Prepare the run directory and partitions, then run the simulation and draw its curve.

    Bad input, bad data and partitions that cannot be drawn have been told before Hydra
    started (`cli`).
    """
    # Ray's C++ failure handler would catch SIGTERM with a stack dump; without it, Ray's
    # driver turns SIGTERM into `SystemExit(SIGTERM)`, ended like Ctrl-C. Ray reads this
    # when it is imported, so before anything imports it.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    from fedavg_mnist.ops.ray_setup import local_ray_args

    jobs = parallel_jobs()
    cpus = cpu_share(jobs)
    if jobs > 1 and config.client_resources.num_cpus > cpus:
        # a parallel sweep point stays within its share
        resources = replace(config.client_resources, num_cpus=cpus)
        config = replace(config, client_resources=resources)
    init_args = {**quiet_libraries(config.verbose), **local_ray_args(cpus)}

    import torch
    from flwr.simulation import run_simulation

    from fedavg_mnist.analysis.figures import plot_accuracy
    from fedavg_mnist.client_app import make_client_app
    from fedavg_mnist.models import bf16_is_slow, resolve_device
    from fedavg_mnist.polling import engine_wakeups
    from fedavg_mnist.records import load_results
    from fedavg_mnist.server_app import make_server_app, prepare_run

    device = resolve_device(config.device)
    if config.precision == "bf16" and bf16_is_slow(device):
        print(
            "warning: this CPU has neither AVX512-BF16 nor AMX: precision=bf16 runs slower "
            "than fp32 here (docs/performance.md)",
            file=sys.stderr,
            flush=True,
        )
    prepare_run(config)
    torch.set_num_threads(cpus)  # the server's evaluation
    on_stop: list[Callable[[], object]] = []
    with (
        engine_wakeups() if config.fast_polling else nullcontext() as wakeups,
        no_room_for_clients_told(config),
        stopped_like_ctrl_c(on_stop),
    ):
        run_simulation(
            server_app=make_server_app(config, wakeups, on_stop),
            client_app=make_client_app(config),
            num_supernodes=config.num_clients,
            backend_config={
                "client_resources": {
                    "num_cpus": config.client_resources.num_cpus,
                    "num_gpus": gpus_per_client(config.client_resources.num_gpus, device.type),
                },
                "init_args": init_args,
            },
            verbose_logging=config.verbose,
        )
    output_dir = Path(config.output_dir)
    plot_accuracy([load_results(output_dir)], output_dir / "accuracy.png")


@contextmanager
def stopped_like_ctrl_c(on_stop: list[Callable[[], object]]) -> Iterator[None]:
    """On Ctrl-C or SIGTERM, keep the newest evaluated round (`on_stop`), then end the run."""
    try:
        yield
    except SystemExit as err:  # Ray's driver: SIGTERM -> sys.exit(SIGTERM)
        if err.code != signal.SIGTERM:
            raise
        call_all(on_stop)
        raise Terminated() from None
    except KeyboardInterrupt:
        call_all(on_stop)
        raise


def call_all(hooks: list[Callable[[], object]]) -> None:
    """Call each hook; a failing one does not keep the others from running."""
    for hook in hooks:
        try:
            hook()
        except Exception as err:  # the run is ending anyway: say it and go on
            print(f"warning: while stopping: {first_line(err)}", file=sys.stderr, flush=True)


@contextmanager
def no_room_for_clients_told(config: RunConfig) -> Iterator[None]:
    """Tell in one line that no Ray node can host a client (Flower's engine has no actor)."""
    try:
        yield
    except RuntimeError as err:
        cause = root_cause(err)
        if "ActorPool is empty" not in str(cause):
            raise
        resources = config.client_resources
        raise ClientFailure(
            f"{first_line(cause)}: no Ray node has the {resources.num_cpus} CPUs (and GPU "
            "share) that client_resources asks for each client"
        ) from err


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run one configuration; any failure ends the process with `failure_status`."""
    try:
        run(sweep_group(to_run_config(cfg)))
    except (Exception, KeyboardInterrupt) as err:
        end(*failure_status(err))


def causes(err: BaseException) -> list[BaseException]:
    """Return `err` and the exceptions it was raised from, outermost first."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def root_cause(err: BaseException) -> BaseException:
    """Return the innermost exception `err` was raised from."""
    return causes(err)[-1]


def first_line(err: BaseException) -> str:
    """Return the first line of an exception's message, or its type's name."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def failure_status(err: BaseException) -> tuple[str, int]:
    """Return the one line and exit status a failure ends the CLI with.

    Bad input (`UserError`, 2) and a run that cannot go on (`RunFailure`: a client, the
    federation, 1) are told in one line. Anything else is unexpected, maybe a bug: its
    traceback is printed first, then the line.
    """
    for cause in causes(err):
        if isinstance(cause, Terminated):
            return "interrupted (SIGTERM): continue with the same overrides and resume=true", 143
        if isinstance(cause, KeyboardInterrupt):
            return "interrupted: continue the run with the same overrides and resume=true", 130
        if isinstance(cause, UserError):
            return first_line(cause), 2
        if isinstance(cause, RunFailure):
            return f"the simulation failed: {first_line(cause)}", 1
    traceback.print_exception(err, file=sys.stderr)
    return f"the simulation failed unexpectedly (traceback above): {first_line(root_cause(err))}", 1


def end(message: str, status: int) -> NoReturn:
    """Print one `error:` line and end the process now.

    A failed simulation can leave the `ServerApp`'s thread waiting for replies that will
    not come (Flower's grid has no way to stop it); ending the process is what ends it.
    Ray has been shut down by then, and results and checkpoints are already on disk.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def check_data(configs: list[RunConfig]) -> None:
    """Check every run's MNIST (downloading it if asked) and partitions before Hydra starts.

    Bad data, or a K the partition cannot split the data by, end before anything is written.
    """
    from fedavg_mnist.partitions import client_partitions

    for dataset in {config.dataset for config in configs}:
        ensure_mnist(dataset.root, dataset.download, dataset.verify_checksums)
    for config in configs:
        client_partitions(config)  # cached: the run reuses them


def check_trackers(configs: list[RunConfig]) -> None:
    """Check every run's tracker (installed, its folder writable) before Hydra starts."""
    from fedavg_mnist.tracking import check_tracking

    for config in configs:
        check_tracking(config)


def sweep_group(config: RunConfig) -> RunConfig:
    """Group a sweep point's tracker run with its sweep's (W&B's group: the sweep folder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if config.wandb_group or not HydraConfig.initialized():
        return config
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return config
    sweep_dir = Path(hydra_config.sweep.dir).expanduser().resolve()
    return replace(config, wandb_group="/".join(sweep_dir.parts[-2:]))


def cli() -> None:
    """Console entry: check the overrides and the data, then hand over to Hydra."""
    signal.signal(signal.SIGTERM, _terminate)
    register_hydra_config()
    try:
        configs = check_overrides(sys.argv[1:])
        check_trackers(configs)
        check_data(configs)
        if run_dir := named_run_dir(sys.argv[1:]):
            hold_run_dir(run_dir)  # before Hydra writes its `.hydra/` there
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        end(*failure_status(err))
    main()


if __name__ == "__main__":
    cli()
