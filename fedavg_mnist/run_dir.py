"""The run directory's guarantees: results never overwritten, a resume only of the same run.

`check_output_dir` only looks (the CLI calls it before Hydra writes anything);
`prepare_run_dir` checks and then creates the folder, once per run, whichever launcher
started it.
"""

import os
from pathlib import Path
from typing import Any

from fedavg_mnist.checkpoint import CHECKPOINT_FILE
from fedavg_mnist.config import RESULT_SETTINGS, RunConfig, flatten
from fedavg_mnist.errors import UserError
from fedavg_mnist.records import RESULTS_FILE, load_results, partition_name


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(output_dir: Path, resume: bool = False) -> None:
    """Fail in one line if results would be overwritten, or nothing is there to resume.

    Writes nothing: a folder that does not exist yet must be one the user may create.
    """
    output_dir = output_dir.expanduser().resolve()
    results = output_dir / RESULTS_FILE
    if resume:
        if not (output_dir / CHECKPOINT_FILE).is_file():
            raise UserError(f"nothing to resume: no {CHECKPOINT_FILE} in {output_dir}")
    elif results.exists():
        raise UserError(
            f"{results} already exists: choose another output directory (or resume=true)"
        )
    existing = _nearest_existing(output_dir)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output directory {output_dir} is not writable: {existing} is not")


def result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Return the settings that change results, from a recorded config of any version."""
    flat = flatten(config)
    flat["partition"] = partition_name(config)
    return {key: flat.get(key) for key in RESULT_SETTINGS}


def check_resumable(config: RunConfig) -> None:
    """Refuse to resume a run under other settings or one that has nothing left to do."""
    previous = load_results(Path(config.output_dir))
    saved, now = result_settings(previous["config"]), result_settings(config.record())
    changed = [key for key in RESULT_SETTINGS if saved[key] != now[key]]
    if changed:
        key = changed[0]
        raise UserError(
            f"cannot resume {config.output_dir} with {key}={now[key]}: "
            f"the run used {key}={saved[key]}"
        )
    if previous.get("finished") and previous.get("completed_rounds", 0) >= config.num_rounds:
        raise UserError(
            f"nothing to resume: {config.output_dir} finished its "
            f"{previous['completed_rounds']} rounds (raise num_rounds to continue it)"
        )


def prepare_run_dir(config: RunConfig) -> None:
    """Check that the run may write (or resume) its `output_dir`, then create the folder."""
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir, config.resume)
    if config.resume:
        check_resumable(config)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output directory {output_dir} is not writable: {err.strerror}") from err
