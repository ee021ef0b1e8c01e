"""Hydra entry point: `python -m fedavg_mnist.main [key=value ...]` runs one FedAvg simulation."""

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from flwr.app import ConfigRecordValues
from omegaconf import DictConfig

from .checkpoint import CHECKPOINT_FILE
from .config import (
    flatten,
    gpus_per_client,
    register_schema,
    to_plain_dict,
    to_run_config,
    validate,
)
from .data import PARTITIONS_FILE, client_partitions, load_data, partitions_key, save_partitions
from .errors import UserError
from .models import bf16_is_slow, resolve_device
from .polling import install_engine_wakeups
from .results import RESULTS_FILE, load_results

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_GROUPS = ("model", "partition", "experiment", "lr_grid")

register_schema()


def check_group_choices(overrides: list[str]) -> None:
    """Reject an unknown choice of a config group in one line, before Hydra's report."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+")
        if not sep or key not in CONFIG_GROUPS:
            continue
        known = sorted(path.stem for path in (CONF_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in known:
                raise UserError(f"unknown {key} {choice!r}: choose one of {', '.join(known)}")


def prepare_output_dir(output_dir: Path, resume: bool = False) -> None:
    """Make sure results can be written there and none would be overwritten.

    With `resume`, the directory must instead hold a checkpoint to continue from.
    """
    results = output_dir / RESULTS_FILE
    if resume:
        if not (output_dir / CHECKPOINT_FILE).is_file():
            raise UserError(f"nothing to resume: no {CHECKPOINT_FILE} in {output_dir}")
    elif results.exists():
        raise UserError(f"{results} already exists: choose another hydra.run.dir (or resume=true)")
    check_writable_location(output_dir)


# Settings that may change when a run is resumed: they do not change its results.
RESUMABLE_CHANGES = (
    "resume",
    "num_rounds",
    "stop_at_target",
    "checkpoint_every",
    "device",
    "client_resources",
    "fast_polling",
    "verbose",
    "output_dir",
    "dataset.root",
    "dataset.download",
    "dataset.verify_checksums",
)


def check_resumable(cfg: DictConfig) -> None:
    """Refuse to resume a run under other settings or one that has nothing left to do."""
    previous = load_results(Path(cfg.output_dir))
    saved, now = flatten(previous["config"]), flatten(to_plain_dict(cfg))
    changed = sorted(
        key
        for key in saved.keys() | now.keys()
        if saved.get(key) != now.get(key) and not key.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        key = changed[0]
        raise UserError(
            f"cannot resume {cfg.output_dir} with {key}={now.get(key)}: "
            f"the run used {key}={saved.get(key)}"
        )
    if previous.get("finished") and previous.get("completed_rounds", 0) >= cfg.num_rounds:
        raise UserError(
            f"nothing to resume: {cfg.output_dir} finished its {previous['completed_rounds']} "
            "rounds (raise num_rounds to continue it)"
        )


# Ray prestarts one idle worker per CPU when the driver connects, but Flower gives its
# actors a runtime environment (PYTHONPATH), so they start workers of their own and the
# prestarted ones only compete with them for the CPU during start-up.
RAY_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def quiet_libraries(verbose: bool) -> dict[str, ConfigRecordValues]:
    """Keep Flower's and Ray's logs out of the way unless `verbose`; return Ray's init args."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if verbose:
        return {}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return {"logging_level": "error", "log_to_driver": False}


def run(cfg: DictConfig) -> Path:
    """Validate, launch the Flower simulation and return the results file."""
    validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and bf16_is_slow(device):
        print(
            "warning: this CPU has neither AVX512-BF16 nor AMX: precision=bf16 runs slower "
            "than fp32 here (docs/performance.md)",
            file=sys.stderr,
            flush=True,
        )
    cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    output_dir = Path(cfg.output_dir)
    prepare_output_dir(output_dir, cfg.resume)
    if cfg.resume:
        check_resumable(cfg)
    init_args = quiet_libraries(cfg.verbose)  # before `datasets` is imported: it logs then
    load_data(cfg)
    save_partitions(output_dir / PARTITIONS_FILE, partitions_key(cfg), client_partitions(cfg))

    from flwr.simulation import run_simulation

    from .client import make_client_app
    from .server import make_server_app

    if cfg.fast_polling:
        install_engine_wakeups()
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
            # Flower's type for Ray's init args lists scalars only; Ray takes this dict.
            "init_args": {**init_args, "_system_config": RAY_SYSTEM_CONFIG},  # type: ignore[dict-item]
        },
        verbose_logging=cfg.verbose,
    )
    return output_dir / RESULTS_FILE


def print_summary(results_path: Path) -> None:
    """One line: best accuracy, rounds to target, where the results are."""
    results = load_results(results_path)
    target = results["target_accuracy"]
    reached = results["rounds_to_target"]
    to_target = f"round {reached}" if reached is not None else "not reached"
    print(
        f"best accuracy {results['best_accuracy']:.4f} (round {results['best_round']}); "
        f"target {target:.2%}: {to_target}; "
        f"{results['completed_rounds']} rounds in {results['wall_seconds']:.1f}s; "
        f"results: {results_path}",
        flush=True,
    )


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run one configuration; bad input ends in one line on stderr and exit status 2."""
    try:
        print_summary(run(cfg))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RuntimeError as err:  # a client or the server failed during the simulation
        print(f"error: the simulation failed: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def _sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Return the sweep's first point, and each other value of each swept key tried alone."""
    choices = []
    for override in overrides:
        key, _, value = override.partition("=")
        values = value.split(",") if "," in value and "[" not in value else [value]
        choices.append([f"{key}={v}" for v in values])
    base = [options[0] for options in choices]
    variants = [base]
    for index, options in enumerate(choices):
        for option in options[1:]:
            variants.append(base[:index] + [option] + base[index + 1 :])
    return variants


def check_overrides(argv: list[str]) -> None:
    """Compose the config for the given overrides, so a bad one is one line, not Hydra's report."""
    from hydra import compose, initialize_config_dir

    check_group_choices(argv)
    output_dirs = [
        Path(value)
        for key, sep, value in (arg.partition("=") for arg in argv)
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir", "output_dir")
    ]
    resume = any(arg.lower() == "resume=true" for arg in argv)
    for output_dir in output_dirs:
        prepare_output_dir(output_dir, resume)
    if not output_dirs:  # Hydra's default run directory lies under the working directory
        check_writable_location(Path.cwd())
    overrides = [arg for arg in argv if "=" in arg and not arg.lstrip("+~").startswith("hydra")]
    multirun = "-m" in argv or "--multirun" in argv
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for variant in _sweep_variants(overrides) if multirun else [overrides]:
            try:
                compose("config", overrides=[*variant, "output_dir=."])
            except Exception as err:  # Hydra's and OmegaConf's many config errors
                causes = [err, err.__cause__] if err.__cause__ else [err]
                reason = "; ".join(str(e).strip().splitlines()[0] for e in causes)
                raise UserError(f"invalid override: {reason}") from err


def check_writable_location(path: Path) -> None:
    """Fail in one line when `path` cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"output directory {path} is not writable: {err.strerror or err}") from err


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
