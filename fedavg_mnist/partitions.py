"""Client partitions: flwr-datasets partitioners over MNIST's labels, and the partitions file.

Partitions are chosen by name from `PARTITIONERS`. A run saves each client's example
indices to `partitions.npz` in its directory before the clients start; simulated clients
read them from there instead of partitioning again.
"""

import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedavg_mnist.config import PARTITIONS, partition_label
from fedavg_mnist.errors import UserError
from fedavg_mnist.mnist import mnist_test_set, mnist_training_set, read_train_labels
from fedavg_mnist.storage import write_atomic

if TYPE_CHECKING:  # imported where used: worker processes that read the partitions skip them
    from flwr_datasets.partitioner import Partitioner

    from fedavg_mnist.config import RunConfig


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
            warnings.simplefilter("ignore", UserWarning)  # the Dirichlet's retries, each told
            return [
                np.asarray(partitioner.load_partition(pid)[:]["index"], dtype=np.int64)
                for pid in range(partitioner.num_partitions)
            ]
    except ValueError as err:
        raise UserError(f"invalid partition: {err}") from err


def iid(num_clients: int, seed: int, settings: "RunConfig") -> "Partitioner":
    """IID: the shuffled training set split evenly, 600 examples per client at K=100."""
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_clients)


def pathological(num_clients: int, seed: int, settings: "RunConfig") -> "Partitioner":
    """Pathological non-IID: sort by label, cut 2K shards, give each client 2 shards."""
    from flwr_datasets.partitioner import ShardPartitioner

    return ShardPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_shards_per_partition=2,
        shard_size=None,  # 60,000 / (2K): 200 shards of 300 at K=100
        shuffle=True,
        seed=seed,
    )


def dirichlet(num_clients: int, seed: int, settings: "RunConfig") -> "Partitioner":
    """Spread each label's examples over the clients by a draw of Dir(α).

    Small α: few labels per client. A draw leaving a client under 10 examples is drawn
    again (flwr-datasets' retry).
    """
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=settings.partition_alpha,
        min_partition_size=10,
        shuffle=True,
        seed=seed,
    )


def classes(num_clients: int, seed: int, settings: "RunConfig") -> "Partitioner":
    """Give each client k labels (flwr-datasets' `PathologicalPartitioner`).

    Each label's examples are split evenly among the clients holding it; client i's first
    label is i mod 10.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=settings.partition_classes,
        class_assignment_mode="first-deterministic",  # every label used once K >= 10
        shuffle=True,
        seed=seed,
    )


# The partitions a run can name (`partition=`): each builds its partitioner from K, the
# seed and its settings (`config.PARTITION_SETTINGS`).
PARTITIONERS: dict[str, Callable[[int, int, "RunConfig"], "Partitioner"]] = {
    "iid": iid,
    "pathological": pathological,
    "dirichlet": dirichlet,
    "classes": classes,
}
assert tuple(PARTITIONERS) == PARTITIONS, "config.PARTITIONS names the registry's entries"


@lru_cache(maxsize=4)
def _client_partitions(
    partition: str,
    root: str,
    download: bool,
    verify: bool,
    seed: int,
    num_clients: int,
    settings: "RunConfig",
) -> tuple[np.ndarray, ...]:
    labels = read_train_labels(root, download, verify)
    try:
        partitioner = PARTITIONERS[partition](num_clients, seed, settings)
    except ValueError as err:
        raise UserError(f"invalid partition: {err}".splitlines()[0]) from err
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


def client_partitions(config: "RunConfig") -> tuple[np.ndarray, ...]:
    """Return each client's training indices for this config, computed once per process."""
    return _client_partitions(
        config.partition,
        config.dataset.root,
        config.dataset.download,
        config.dataset.verify_checksums,
        config.seed,
        config.num_clients,
        partition_settings(config),
    )


def partition_settings(config: "RunConfig") -> "RunConfig":
    """Return the defaults with the partitioner's settings of `config`.

    Equal partitions then share a cache entry whatever else the run sets.
    """
    from dataclasses import replace

    from fedavg_mnist.config import RunConfig

    defaults = RunConfig()
    return replace(
        defaults,
        partition_alpha=config.partition_alpha,
        partition_classes=config.partition_classes,
    )


PARTITIONS_FILE = "partitions.npz"


def partitions_key(config: "RunConfig") -> str:
    """Return what decides the partitions: the partitioner and its settings, K and the seed."""
    name = partition_label(config.record(), config.partition)
    return f"{name}|K={config.num_clients}|seed={config.seed}"


def save_partitions(path: Path, key: str, parts: tuple[np.ndarray, ...]) -> None:
    """Write the clients' indices atomically as `.npz` (all indices, offsets, key)."""
    offsets = np.cumsum([0, *(len(part) for part in parts)])
    indices = np.concatenate(parts)
    write_atomic(
        path,
        lambda out: np.savez(out, indices=indices, offsets=offsets, key=np.array(key)),
    )


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


def save_run_partitions(config: "RunConfig") -> None:
    """Draw the run's partitions and save them in its directory, unless saved there already."""
    path = Path(config.output_dir) / PARTITIONS_FILE
    if load_partitions(path, partitions_key(config)) is None:
        save_partitions(path, partitions_key(config), client_partitions(config))


@lru_cache(maxsize=4)
def run_partitions(config: "RunConfig") -> tuple[np.ndarray, ...]:
    """Return the run's partitions, read from `<output_dir>/partitions.npz` if saved there."""
    saved = load_partitions(Path(config.output_dir) / PARTITIONS_FILE, partitions_key(config))
    return saved if saved is not None else client_partitions(config)


def clear_caches() -> None:
    """Forget the MNIST arrays and partitions loaded by this process (for benchmarks)."""
    mnist_training_set.cache_clear()
    mnist_test_set.cache_clear()
    _client_partitions.cache_clear()
    run_partitions.cache_clear()
