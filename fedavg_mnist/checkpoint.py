"""Checkpoints of a run: the global model, history and RNG state after a round, saved atomically."""

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    """Everything a run needs to continue after `server_round` exactly as if never stopped."""

    server_round: int
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    strategy: dict[str, Any]
    rng: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Return the global RNG states (Python's, NumPy's, torch's) in a torch-loadable form."""
    numpy_state = np.random.get_state(legacy=False)
    assert isinstance(numpy_state, dict)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states `rng_state` returned."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy["bit_generator"],
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])


def save_checkpoint(output_dir: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint.pt` so that a reader finds the previous checkpoint or this one."""
    path = output_dir / CHECKPOINT_FILE
    payload = {
        "server_round": checkpoint.server_round,
        "state_dict": {key: value.detach().cpu() for key, value in checkpoint.state_dict.items()},
        "history": checkpoint.history,
        "strategy": checkpoint.strategy,
        "rng": checkpoint.rng,
    }
    try:
        handle, tmp_name = tempfile.mkstemp(dir=output_dir, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err


def load_checkpoint(output_dir: Path) -> Checkpoint:
    """Read `checkpoint.pt` from a run directory."""
    path = output_dir / CHECKPOINT_FILE
    try:
        payload = torch.load(path, weights_only=True)
        return Checkpoint(**payload)
    except FileNotFoundError as err:
        raise UserError(f"nothing to resume: {path} does not exist") from err
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise UserError(f"cannot read checkpoint {path}: {err}") from err
