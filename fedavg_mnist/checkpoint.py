"""Checkpoints of a run: the global model and history after a round, saved atomically."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedavg_mnist.errors import UserError
from fedavg_mnist.storage import write_atomic

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: the status of a
    import torch  # queue or a run directory needs only the file's name

CHECKPOINT_FILE = "checkpoint.pt"
# Saved by earlier versions and never needed: every draw after initialisation comes from a
# generator derived from (seed, round), and the strategy's state is the config's.
_RETIRED_FIELDS = ("strategy", "rng")


@dataclass
class Checkpoint:
    """Everything a run needs to continue after `server_round` exactly as if never stopped."""

    server_round: int
    state_dict: "dict[str, torch.Tensor]"
    history: list[dict[str, Any]]


def save_checkpoint(output_dir: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint.pt` so that a reader finds the previous checkpoint or this one."""
    import torch

    path = output_dir / CHECKPOINT_FILE
    payload = {
        "server_round": checkpoint.server_round,
        "state_dict": {key: value.detach().cpu() for key, value in checkpoint.state_dict.items()},
        "history": checkpoint.history,
    }
    write_atomic(path, lambda stream: torch.save(payload, stream))


def load_checkpoint(output_dir: Path) -> Checkpoint:
    """Read `checkpoint.pt` from a run directory."""
    import torch

    path = output_dir / CHECKPOINT_FILE
    try:
        payload = torch.load(path, weights_only=True)
        for field in _RETIRED_FIELDS:
            payload.pop(field, None)
        return Checkpoint(**payload)
    except FileNotFoundError as err:
        raise UserError(f"nothing to resume: {path} does not exist") from err
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise UserError(f"cannot read checkpoint {path}: {err}") from err
