"""Watching a run in the tracker people already use: TensorBoard or Weights & Biases.

`tracking=tensorboard` or `tracking=wandb` (the `tracking` extra installs both) logs, from
the server's round loop as each round's evaluation is recorded: the test accuracy and loss,
the mean over the round's clients of their first and last local epoch's training loss,
and the round's wall time, against the round number; the run's settings are the tracker's
hyperparameters. The logs lie in `<tracking_dir>/tensorboard/` or `<tracking_dir>/wandb/`
(`tracking_dir` empty: the run directory), so `tensorboard --logdir <sweep dir>` shows every
point of a sweep. A resumed run continues its tracker run: TensorBoard drops what the
stopped run logged after its checkpoint, W&B resumes the run whose ID the results keep.
"""

import importlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from fedavg_mnist.config import RunConfig
from fedavg_mnist.errors import UserError
from fedavg_mnist.run_dir import nearest_existing
from fedavg_mnist.settings import flatten

NO_TRACKING = "none"
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> module it needs
TRACKING_EXTRA = "tracking"  # pyproject's optional dependencies that install them
WANDB_RUN_ID_KEY = "wandb_run_id"  # where results.json keeps the W&B run a resume continues


def log_dir(config: RunConfig) -> Path:
    """Return the folder the run's tracker writes to."""
    base = Path(config.tracking_dir or config.output_dir).expanduser()
    return base / config.tracking


def check_installed(config: RunConfig) -> None:
    """Fail in one line if the run's tracker is not installed; writes nothing."""
    if config.tracking == NO_TRACKING:
        return
    module = TRACKER_MODULES[config.tracking]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"tracking={config.tracking} needs the {module} package: "
            f'pip install -e ".[{TRACKING_EXTRA}]"'
        ) from None


def check_tracking(config: RunConfig) -> None:
    """Fail in one line if the tracker is missing or cannot write its folder; writes nothing."""
    check_installed(config)
    if config.tracking == NO_TRACKING:
        return
    folder = log_dir(config).resolve()
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"tracking folder {folder} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"tracking folder {folder} is not writable: {existing} is not")


class Tracker(Protocol):
    """Where each round's figures go besides the results."""

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log one round's record (`records.RunRecorder.record_round`'s)."""

    def close(self) -> None:
        """Write out what is pending and let go of the tracker's files."""


class NoTracker:
    """`tracking=none`: the results and the progress line only."""

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log nothing."""

    def close(self) -> None:
        """Nothing to close."""


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """Return the figures a tracker shows for one round, by name."""
    scalars = {
        "test/accuracy": float(record["accuracy"]),
        "test/loss": float(record["loss"]),
        "round/seconds": float(record["seconds"]),
    }
    clients = record.get("clients") or []
    for epoch in ("first", "last"):
        losses = [c[f"train_loss_{epoch}_epoch"] for c in clients]
        if losses and None not in losses:
            scalars[f"train/client_loss_{epoch}_epoch"] = sum(losses) / len(losses)
    return scalars


def hyperparameters(config: RunConfig) -> dict[str, bool | int | float | str]:
    """Return the run's settings as trackers take them: flat, no None (∞ is `inf`)."""
    return {
        key: "inf" if value is None and key == "batch_size" else value
        for key, value in flatten(config.record()).items()
        if value is not None or key == "batch_size"
    }


class TensorBoardTracker:
    """Scalars per round through PyTorch's `SummaryWriter`; the settings as HParams."""

    def __init__(self, config: RunConfig, first_round: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # A resumed run redoes the rounds after its checkpoint: drop what the stopped one
        # logged of them, so each round has one point.
        purge_step = first_round if first_round > 0 else None
        self.writer = SummaryWriter(str(log_dir(config)), purge_step=purge_step)
        if first_round == 0:
            metrics = dict.fromkeys(("test/accuracy", "test/loss"), 0.0)
            assert self.writer.file_writer is not None  # opened by the constructor
            for summary in hparams(hyperparameters(config), metrics):
                self.writer.file_writer.add_summary(summary)

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Add the round's scalars at step = the round, and flush them to disk."""
        for name, value in round_scalars(record).items():
            self.writer.add_scalar(name, value, global_step=int(record["round"]))
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


class WandbTracker:
    """One W&B run per experiment run, grouped by sweep, resumed with the run."""

    def __init__(self, config: RunConfig, run_id: str) -> None:
        import wandb

        folder = log_dir(config)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=config.wandb_project,
                group=config.wandb_group or None,
                name=Path(config.output_dir).name,
                id=run_id,
                resume="allow",
                dir=str(folder.parent),  # W&B writes its `wandb/` folder there
                mode=config.wandb_mode,  # type: ignore[arg-type]
                config=hyperparameters(config),
                # the run's own progress line and results say the rest
                settings=wandb.Settings(console="off", silent=not config.verbose),
            )
        except Exception as err:  # no key, no network: say it, do not run unwatched
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"tracking=wandb could not start: {line}") from None
        # Rounds are the x axis: a resumed run's redone rounds land on their own round.
        self.run.define_metric("*", step_metric="round")

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log the round's figures with the round as their x axis."""
        self.run.log({"round": int(record["round"]), **round_scalars(record)})

    def close(self) -> None:
        """Finish the W&B run; offline, say how to upload it (`wandb sync`)."""
        run_folder = Path(self.run.dir).parent
        offline = self.run.settings.mode == "offline"
        self.run.finish()
        if offline:
            print(f"wandb: offline run {run_folder}; upload it with: wandb sync {run_folder}")


def start_tracker(
    config: RunConfig,
    document: dict[str, Any],
    previous: Mapping[str, Any] | None,
    first_round: int,
) -> Tracker:
    """Start the run's tracker at `first_round` (0, or the first after a resumed checkpoint).

    `document` is the run's results, `previous` those a resumed run had saved: W&B's run ID
    and group are kept there, so a resume continues the run in its sweep's group.
    """
    if config.tracking == "tensorboard":
        return TensorBoardTracker(config, first_round)
    if config.tracking == "wandb":
        run_id = (previous or {}).get(WANDB_RUN_ID_KEY) or uuid.uuid4().hex[:12]
        document[WANDB_RUN_ID_KEY] = run_id
        group = config.wandb_group or (previous or {}).get("config", {}).get("wandb_group", "")
        document["config"]["wandb_group"] = group  # the group the run logs to, resumed or not
        return WandbTracker(replace(config, wandb_group=group), run_id)
    return NoTracker()
