"""Checkpoints of a run: the global model and history after a round, saved atomically."""

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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
    server_state: "dict[str, Any]" = field(default_factory=dict)  # a strategy's own state


def save_checkpoint(output_dir: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint.pt` so that a reader finds the previous checkpoint or this one."""
    import torch

    path = output_dir / CHECKPOINT_FILE
    payload = {
        "server_round": checkpoint.server_round,
        "state_dict": {key: value.detach().cpu() for key, value in checkpoint.state_dict.items()},
        "history": checkpoint.history,
        "server_state": checkpoint.server_state,
    }
    # serialized in memory first: torch turns a failed write (a full disk) into an error
    # that no longer names the operating system's reason; the file's own write keeps it
    serialized = io.BytesIO()
    torch.save(payload, serialized)
    write_atomic(path, lambda stream: stream.write(serialized.getbuffer()))


class Checkpointer:
    """A run's checkpoints: every `every` rounds, and the newest round when the run is stopped.

    `after_round` keeps the newest evaluated round and writes it when due; `stop` writes it
    if the last checkpoint is older, and every round evaluated after it (a run interrupted
    between checkpoints loses no completed round, even where the launcher lets the round in
    flight finish before the process exits). `on_write` runs after each checkpoint (the
    results are saved).
    """

    def __init__(self, output_dir: Path, every: int, on_write: Callable[[], None]) -> None:
        self.output_dir, self.every, self.on_write = output_dir, every, on_write
        self.newest: Checkpoint | None = None
        self.written_round = -1
        self._lock = threading.Lock()

    def after_round(self, checkpoint: Checkpoint, due: bool) -> None:
        """Keep the round just evaluated; write it if `due` or every `every` rounds."""
        with self._lock:
            self.newest = checkpoint
            every = self.every
            if due or (every and checkpoint.server_round % every == 0):
                self._write()

    def stop(self) -> int | None:
        """Write the newest round unless written already, and each round evaluated from now on.

        Called when the run is stopping; returns the round written (None: nothing new).
        """
        with self._lock:
            self.every = 1
            if self.newest is None or self.newest.server_round == self.written_round:
                return None
            self._write()
            return self.written_round

    def _write(self) -> None:
        assert self.newest is not None
        save_checkpoint(self.output_dir, self.newest)
        self.written_round = self.newest.server_round
        self.on_write()


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
