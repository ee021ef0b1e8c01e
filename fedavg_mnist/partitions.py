"""Client partitions: flwr-datasets partitioners over MNIST's labels, and the partitions file.

A run's `ServerApp` saves each client's example indices to `partitions.npz` in the run
directory; simulated clients read them from there instead of partitioning again.
"""

import json
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # imported where used: worker processes that read the partitions skip them
    from flwr_datasets.partitioner import Partitioner

from .errors import UserError
from .mnist import load_mnist


def partition_indices(
    labels: np.ndarray, partitioner: "Partitioner", seed: int
) -> list[np.ndarray]:
    """Split example indices among clients with a flwr-datasets partitioner.

    The partitioner sees a label-only table shuffled by `seed`, so IID partitions hold
    random examples; each client gets an index array into the in-memory tensors.
    Each partition's indices are read in one slice (`[:]`): iterating its column reads
    one row at a time, 5x slower.
    """
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner.dataset = Dataset.from_dict({"label": labels[order], "index": order})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyarrow, inside dataset.sort
            return [
                np.asarray(partitioner.load_partition(pid)[:]["index"], dtype=np.int64)
                for pid in range(partitioner.num_partitions)
            ]
    except ValueError as err:
        raise UserError(f"invalid partition: {err}") from err


def make_partitioner(partition_cfg: DictConfig | dict[str, Any]) -> "Partitioner":
    """Instantiate the partitioner named by the config's `_target_`."""
    from flwr_datasets.partitioner import Partitioner
    from hydra.utils import instantiate

    try:
        partitioner = instantiate(partition_cfg)
    except Exception as err:
        raise UserError(f"invalid partition: {err}".splitlines()[0]) from err
    if not isinstance(partitioner, Partitioner):
        raise UserError(f"invalid partition: {type(partitioner).__name__} is no Partitioner")
    return partitioner


@lru_cache(maxsize=4)
def _client_partitions(
    partition_json: str, root: str, download: bool, verify: bool, seed: int, num_clients: int
) -> tuple[np.ndarray, ...]:
    labels = load_mnist(root, download, verify).train_labels.numpy()
    partitioner = make_partitioner(json.loads(partition_json))
    parts = partition_indices(labels, partitioner, seed)
    if len(parts) != num_clients:
        raise UserError(
            f"invalid partition: {len(parts)} partitions for num_clients (K) = {num_clients}"
        )
    empty = [pid for pid, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise UserError(
            f"invalid partition: K={num_clients} leaves client {empty[0]} without examples"
        )
    assigned = np.concatenate(parts)
    num_used = len(np.unique(assigned))
    if len(assigned) != len(labels) or num_used != len(labels):
        raise UserError(
            f"invalid partition: K={num_clients} does not divide the {len(labels)} training "
            f"examples into partitions ({num_used} used, each once expected)"
        )
    return tuple(parts)


def client_partitions(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    """Return each client's training indices for this config, computed once per process."""
    partition = OmegaConf.to_container(cfg.partition, resolve=True)
    return _client_partitions(
        json.dumps(partition, sort_keys=True),
        cfg.dataset.root,
        cfg.dataset.download,
        cfg.dataset.verify_checksums,
        cfg.seed,
        cfg.num_clients,
    )


PARTITIONS_FILE = "partitions.npz"


def partitions_key(cfg: DictConfig) -> str:
    """Return what decides the partitions: the partitioner, K and the seed."""
    partition = OmegaConf.to_container(cfg.partition, resolve=True)
    return json.dumps(partition, sort_keys=True) + f"|K={cfg.num_clients}|seed={cfg.seed}"


def save_partitions(path: Path, key: str, parts: tuple[np.ndarray, ...]) -> None:
    """Write the clients' indices atomically as `.npz` (all indices, offsets, key)."""
    offsets = np.cumsum([0, *(len(part) for part in parts)])
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, indices=np.concatenate(parts), offsets=offsets, key=np.array(key))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_partitions(path: Path, key: str) -> tuple[np.ndarray, ...] | None:
    """Read partitions saved by `save_partitions`; None if absent or saved for another key."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            indices, offsets = saved["indices"], saved["offsets"]
    except (OSError, KeyError, ValueError):
        return None
    return tuple(indices[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True))


def save_run_partitions(cfg: DictConfig) -> None:
    """Draw the run's partitions and save them in its directory, unless saved there already."""
    path = Path(cfg.output_dir) / PARTITIONS_FILE
    if load_partitions(path, partitions_key(cfg)) is None:
        save_partitions(path, partitions_key(cfg), client_partitions(cfg))


@lru_cache(maxsize=4)
def run_partitions(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    """Return the run's partitions, read from `<output_dir>/partitions.npz` if `main` saved them."""
    saved = load_partitions(Path(cfg.output_dir) / PARTITIONS_FILE, partitions_key(cfg))
    return saved if saved is not None else client_partitions(cfg)


def clear_caches() -> None:
    """Forget the MNIST tensors and partitions loaded by this process (for benchmarks)."""
    load_mnist.cache_clear()
    _client_partitions.cache_clear()
    run_partitions.cache_clear()
