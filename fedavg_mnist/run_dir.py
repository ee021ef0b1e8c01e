"""The run directory's guarantees: results never overwritten, a resume only of the same run.

The `ServerApp` checks them whichever launcher started it; the Hydra CLI also checks them
before it starts the simulation, so bad input ends before Ray starts.
"""

import tempfile
from pathlib import Path

from omegaconf import DictConfig

from .checkpoint import CHECKPOINT_FILE
from .config import flatten, to_plain_dict
from .errors import UserError
from .results import RESULTS_FILE, load_results

# Settings that may change when a run is resumed: they do not change its results (and
# settings earlier versions recorded that the config no longer has).
RESUMABLE_CHANGES = (
    "resume",
    "target_accuracy",
    "model.target_accuracy",
    "model.lr",
    "num_rounds",
    "stop_at_target",
    "checkpoint_every",
    "device",
    "cuda_graphs",
    "client_resources",
    "fast_polling",
    "verbose",
    "output_dir",
    "dataset.root",
    "dataset.download",
    "dataset.verify_checksums",
)


def check_writable_location(path: Path) -> None:
    """Fail in one line when `path` cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"output directory {path} is not writable: {err.strerror or err}") from err


def prepare_output_dir(output_dir: Path, resume: bool = False) -> None:
    """Make sure results can be written there and none would be overwritten.

    With `resume`, the directory must instead hold a checkpoint to continue from.
    """
    results = output_dir / RESULTS_FILE
    if resume:
        if not (output_dir / CHECKPOINT_FILE).is_file():
            raise UserError(f"nothing to resume: no {CHECKPOINT_FILE} in {output_dir}")
    elif results.exists():
        raise UserError(
            f"{results} already exists: choose another output directory (or resume=true)"
        )
    check_writable_location(output_dir)


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


def check_run_dir(cfg: DictConfig) -> None:
    """Check that the run may write (or resume) its absolute `output_dir`."""
    prepare_output_dir(Path(cfg.output_dir), cfg.resume)
    if cfg.resume:
        check_resumable(cfg)
