"""Hydra entry point: `python -m fedavg_mnist.main [key=value ...]` runs one FedAvg simulation."""

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import gpus_per_client, register_schema, to_run_config, validate
from .errors import ClientFailure, UserError
from .overrides import check_overrides
from .ray_setup import local_ray_args
from .run_dir import check_run_dir

register_schema()


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


def ray_init_args(cfg: DictConfig, cpus: int) -> dict[str, Any]:
    """Ray's init arguments: quiet unless `verbose`, on the run's Ray (`local_ray_args`)."""
    return {**quiet_libraries(cfg.verbose), **local_ray_args(cpus)}


def run(cfg: DictConfig) -> None:
    """Check the config, run directory, data and partitions, then launch the simulation.

    The `ServerApp` checks them again, as it does under `flwr run`; checking here first ends
    bad input in one line before Ray starts, and the config and run directory before torch
    is even imported.
    """
    cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    validate(cfg)
    check_run_dir(cfg)

    jobs = parallel_jobs()
    cpus = cpu_share(jobs)
    if jobs > 1 and cfg.client_resources.num_cpus > cpus:
        cfg.client_resources.num_cpus = cpus  # a parallel sweep point stays within its share
    init_args = ray_init_args(cfg, cpus)  # quiets the libraries before `datasets` logs

    import torch
    from flwr.simulation import run_simulation

    from .client import make_client_app
    from .mnist import load_data
    from .models import bf16_is_slow, resolve_device
    from .partitions import save_run_partitions
    from .polling import install_engine_wakeups
    from .server import make_server_app

    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and bf16_is_slow(device):
        print(
            "warning: this CPU has neither AVX512-BF16 nor AMX: precision=bf16 runs slower "
            "than fp32 here (docs/performance.md)",
            file=sys.stderr,
            flush=True,
        )
    load_data(cfg)
    save_run_partitions(cfg)
    if cfg.fast_polling:
        install_engine_wakeups()  # before the engine starts (importing the ClientApp may have)
    torch.set_num_threads(cpus)  # the server's evaluation
    run_config = to_run_config(cfg)
    run_simulation(
        server_app=make_server_app(run_config),
        client_app=make_client_app(run_config),
        num_supernodes=cfg.num_clients,
        backend_config={
            "client_resources": {
                "num_cpus": cfg.client_resources.num_cpus,
                "num_gpus": gpus_per_client(cfg.client_resources.num_gpus, device.type),
            },
            "init_args": init_args,
        },
        verbose_logging=cfg.verbose,
    )


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run one configuration; bad input ends in one line on stderr and exit status 2."""
    try:
        run(cfg)
    except UserError as err:
        fail(str(err), 2)
    except (ClientFailure, RuntimeError, ValueError, ConnectionError) as err:
        fail(f"the simulation failed: {root_cause(err)}", 1)  # a client, Ray or Flower
    except KeyboardInterrupt:
        fail("interrupted: continue the run with the same overrides and resume=true", 130)


def root_cause(err: BaseException) -> str:
    """Return the first line of the innermost exception `err` was raised from."""
    while err.__cause__ is not None:
        err = err.__cause__
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def fail(message: str, status: int) -> NoReturn:
    """Print one `error:` line and end the process now.

    A failed simulation can leave the `ServerApp`'s thread waiting for replies that will
    not come (Flower's grid has no way to stop it); ending the process is what ends it.
    Ray has been shut down by then, and results and checkpoints are already on disk.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def cli() -> None:
    """Console entry: check the overrides, then hand over to Hydra."""
    try:
        check_overrides(sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
