"""MNIST from its IDX files (read with numpy) and client partitions from flwr-datasets."""

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # imported where used: worker processes that read the partitions skip them
    from flwr_datasets.partitioner import Partitioner

from .errors import UserError

# SHA-256 of the uncompressed standard files (LeCun, Cortes, Burges).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The mirrors torchvision uses; each serves `<name>.gz`.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class Mnist:
    """Normalized images (N, 1, 28, 28) float32 and labels (N,) int64, train and test."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def raw_dir(root: str | Path) -> Path:
    """Return `<root>/MNIST/raw`, the layout torchvision uses."""
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or .gz), checking header and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read MNIST file {path}: {err}") from err
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise UserError(f"corrupt MNIST file {path}: shorter than its IDX header")
    zero, dtype, dims = content[0:2], content[2], content[3]
    if zero != b"\x00\x00" or dtype != _IDX_UBYTE or dims != ndim:
        raise UserError(
            f"corrupt MNIST file {path}: bad IDX magic {content[:4].hex()} "
            f"(expected 000008{ndim:02x})"
        )
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", ndim, offset=4))
    expected = header_len + int(np.prod(shape))
    if len(content) != expected:
        raise UserError(f"corrupt MNIST file {path}: {len(content)} bytes, header says {expected}")
    return np.frombuffer(content, np.uint8, offset=header_len).reshape(shape)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, directory: Path) -> None:
    """Fetch `<name>.gz` from the first mirror that serves it with the right SHA-256."""
    errors = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{name}.gz"
        handle, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part.gz")
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(url, timeout=30) as response,
            ):
                shutil.copyfileobj(response, out)
            if _sha256(tmp) != MNIST_SHA256[name]:
                raise OSError("SHA-256 mismatch")
            tmp.replace(directory / f"{name}.gz")
            return
        except (OSError, EOFError) as err:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {err}")
    raise OSError("; ".join(errors))


def ensure_mnist(root: str | Path, download: bool = True, verify: bool = True) -> dict[str, Path]:
    """Return the path of each IDX file, downloading missing ones, verifying SHA-256."""
    directory = raw_dir(root)
    missing = [name for name in MNIST_SHA256 if _find(directory, name) is None]
    if missing and download:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name in missing:
                _download(name, directory)
        except OSError:
            pass
        missing = [name for name in MNIST_SHA256 if _find(directory, name) is None]
    if missing:
        names = ", ".join(MNIST_SHA256)
        raise UserError(
            f"MNIST not found: put {names} (plain or .gz) in {directory} "
            f"(missing: {', '.join(missing)})"
        )
    paths = {name: _find(directory, name) for name in MNIST_SHA256}
    resolved = {name: path for name, path in paths.items() if path is not None}
    if verify:
        for name, path in resolved.items():
            if _sha256(path) != MNIST_SHA256[name]:
                raise UserError(f"corrupt MNIST file {path}: SHA-256 does not match")
    return resolved


def _to_tensor(images: np.ndarray, normalize: bool) -> torch.Tensor:
    tensor = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    if normalize:
        tensor.sub_(MNIST_MEAN).div_(MNIST_STD)
    return tensor.unsqueeze(1).contiguous()


def _labels(labels: np.ndarray, path: Path) -> torch.Tensor:
    if labels.size and labels.max() > 9:
        raise UserError(f"corrupt MNIST file {path}: label {labels.max()} > 9")
    return torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=2)
def load_mnist(
    root: str, download: bool = True, verify: bool = True, normalize: bool = True
) -> Mnist:
    """Load MNIST once per process into in-memory tensors, pixels in [0, 1] or standardized."""
    paths = ensure_mnist(root, download, verify)
    arrays = {}
    for name, path in paths.items():
        arrays[name] = read_idx(path, 3 if "images" in name else 1)
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise UserError(
                f"corrupt MNIST files in {raw_dir(root)}: {split} images {images.shape} "
                f"do not match labels {labels.shape}"
            )
    return Mnist(
        train_images=_to_tensor(arrays["train-images-idx3-ubyte"], normalize),
        train_labels=_labels(arrays["train-labels-idx1-ubyte"], paths["train-labels-idx1-ubyte"]),
        test_images=_to_tensor(arrays["t10k-images-idx3-ubyte"], normalize),
        test_labels=_labels(arrays["t10k-labels-idx1-ubyte"], paths["t10k-labels-idx1-ubyte"]),
    )


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


def load_data(cfg: DictConfig) -> Mnist:
    """Load the MNIST named by the config's `dataset` section."""
    dataset = cfg.dataset
    return load_mnist(dataset.root, dataset.download, dataset.verify_checksums, dataset.normalize)
