"""MNIST from its four IDX files, read with numpy: checked, downloaded if asked, mapped."""

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedavg_mnist.errors import UserError
from fedavg_mnist.storage import write_atomic

if TYPE_CHECKING:  # imported where tensors are made: checking the files needs no torch
    import torch

    from fedavg_mnist.config import DatasetConfig

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
class TrainingSet:
    """MNIST's training images as stored, uint8 (N, 28, 28), and their labels (N,).

    The images are the IDX file itself, memory-mapped: every process of a machine that maps
    it shares one copy of it in the page cache, and a process holds only the pages of the
    examples it reads. `examples` makes the float tensors a model reads, for one client's
    update at a time.
    """

    images: np.ndarray
    labels: np.ndarray
    normalize: bool

    def examples(self, indices: np.ndarray) -> "tuple[torch.Tensor, torch.Tensor]":
        """Return the examples at `indices`: images (n, 1, 28, 28) float32, labels int64.

        The same numbers as converting the whole set and indexing it: the conversion is
        element by element.
        """
        import torch

        images = np.asarray(self.images[indices])
        return _to_tensor(images, self.normalize), torch.from_numpy(
            self.labels[indices].astype(np.int64)
        )


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
    shape = _idx_shape(content[:header_len], ndim, path)
    expected = header_len + int(np.prod(shape))
    if len(content) != expected:
        raise UserError(f"corrupt MNIST file {path}: {len(content)} bytes, header says {expected}")
    return np.frombuffer(content, np.uint8, offset=header_len).reshape(shape)


def _idx_shape(header: bytes, ndim: int, path: Path) -> tuple[int, ...]:
    """Check an IDX header of unsigned bytes with `ndim` dimensions; return the shape."""
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"corrupt MNIST file {path}: shorter than its IDX header")
    zero, dtype, dims = header[0:2], header[2], header[3]
    if zero != b"\x00\x00" or dtype != _IDX_UBYTE or dims != ndim:
        raise UserError(
            f"corrupt MNIST file {path}: bad IDX magic {header[:4].hex()} "
            f"(expected 000008{ndim:02x})"
        )
    return tuple(int(d) for d in np.frombuffer(header, ">u4", ndim, offset=4))


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


def _created_dirs(directory: Path) -> list[Path]:
    """Return the folders `directory.mkdir(parents=True)` would create, deepest first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing


def ensure_mnist(root: str | Path, download: bool = True, verify: bool = True) -> dict[str, Path]:
    """Return the path of each IDX file, downloading missing ones, verifying SHA-256.

    A download that fails leaves no folder behind that it created, and its reason is told.
    """
    directory = raw_dir(root)
    missing = [name for name in MNIST_SHA256 if _find(directory, name) is None]
    tried = ""
    if missing and download:
        created = _created_dirs(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name in missing:
                _download(name, directory)
        except OSError as err:
            tried = f"; the download failed: {err.strerror or err}"
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        missing = [name for name in MNIST_SHA256 if _find(directory, name) is None]
    if missing:
        raise UserError(
            f"MNIST not found in {directory} (missing: {', '.join(missing)}){tried}. "
            "Put the four IDX files (plain or .gz) there, or point at a folder holding "
            "MNIST/raw/ with dataset.root=<folder> or FEDAVG_MNIST_DATA=<folder>"
        )
    paths = {name: _find(directory, name) for name in MNIST_SHA256}
    resolved = {name: path for name, path in paths.items() if path is not None}
    if verify:
        for name, path in resolved.items():
            if _sha256(path) != MNIST_SHA256[name]:
                raise UserError(f"corrupt MNIST file {path}: SHA-256 does not match")
    return resolved


def _to_tensor(images: np.ndarray, normalize: bool) -> "torch.Tensor":
    import torch

    tensor = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    if normalize:
        tensor.sub_(MNIST_MEAN).div_(MNIST_STD)
    return tensor.unsqueeze(1).contiguous()


def _checked_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.size and labels.max() > 9:
        raise UserError(f"corrupt MNIST file {path}: label {labels.max()} > 9")
    return labels


def read_train_labels(root: str, download: bool = True, verify: bool = True) -> np.ndarray:
    """Return the training labels as uint8, without torch: what partitioners split."""
    path = ensure_mnist(root, download, verify)["train-labels-idx1-ubyte"]
    return _checked_labels(read_idx(path, 1), path)


def plain_copy(path: Path) -> Path:
    """Return a plain IDX file of `path`: itself, or a decompressed copy of a `.gz` file.

    The copy is made once per machine and user, in the temporary folder, named for the
    file's path, size and modification time; every process maps that one copy.
    """
    if path.suffix != ".gz":
        return path
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = Path(tempfile.gettempdir()) / f"fedavg-mnist-{os.getuid()}"
    copy = cache / f"{path.stem}-{key.hexdigest()[:16]}"
    cache.mkdir(mode=0o700, exist_ok=True)
    if cache.stat().st_uid != os.getuid():  # a folder of another user's making: not trusted
        raise UserError(f"{cache} belongs to another user")
    if not copy.is_file():
        with gzip.open(path, "rb") as compressed:
            content = compressed.read()
        write_atomic(copy, lambda stream: stream.write(content))
    return copy


def map_idx(path: Path, ndim: int) -> np.ndarray:
    """Memory-map an IDX file of unsigned bytes, checking its header and length.

    A `.gz` file is mapped through its decompressed copy (`plain_copy`); where that copy
    cannot be written, the file is read into this process's memory instead.
    """
    try:
        plain = plain_copy(path)
    except (OSError, EOFError, UserError):
        return read_idx(path, ndim)
    header_len = 4 + 4 * ndim
    try:
        with open(plain, "rb") as stream:
            header = stream.read(header_len)
        size = plain.stat().st_size
    except OSError as err:
        raise UserError(f"cannot read MNIST file {path}: {err}") from err
    shape = _idx_shape(header, ndim, path)
    expected = header_len + int(np.prod(shape))
    if size != expected:
        raise UserError(f"corrupt MNIST file {path}: {size} bytes, header says {expected}")
    if expected == header_len:  # no examples: nothing to map
        return np.zeros(shape, np.uint8)
    return np.memmap(plain, np.uint8, "r", offset=header_len, shape=shape)


def _checked_split(images: np.ndarray, labels: np.ndarray, root: str, split: str) -> None:
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise UserError(
            f"corrupt MNIST files in {raw_dir(root)}: {split} images {images.shape} "
            f"do not match labels {labels.shape}"
        )


@lru_cache(maxsize=2)
def mnist_training_set(
    root: str, download: bool = True, verify: bool = True, normalize: bool = True
) -> TrainingSet:
    """Map MNIST's training set, once per process: what clients train on."""
    paths = ensure_mnist(root, download, verify)
    labels_path = paths["train-labels-idx1-ubyte"]
    images = map_idx(paths["train-images-idx3-ubyte"], 3)
    labels = _checked_labels(read_idx(labels_path, 1), labels_path)
    _checked_split(images, labels, root, "train")
    return TrainingSet(images, labels, normalize)


@lru_cache(maxsize=2)
def mnist_test_set(
    root: str, download: bool = True, verify: bool = True, normalize: bool = True
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Load MNIST's test set once per process as tensors (the server evaluates on it)."""
    import torch

    paths = ensure_mnist(root, download, verify)
    labels_path = paths["t10k-labels-idx1-ubyte"]
    images = read_idx(paths["t10k-images-idx3-ubyte"], 3)
    labels = _checked_labels(read_idx(labels_path, 1), labels_path)
    _checked_split(images, labels, root, "t10k")
    return _to_tensor(images, normalize), torch.from_numpy(labels.astype(np.int64))


def load_training_set(dataset: "DatasetConfig") -> TrainingSet:
    """Map the MNIST training set named by a run's `dataset` settings."""
    settings = (dataset.download, dataset.verify_checksums, dataset.normalize)
    return mnist_training_set(dataset.root, *settings)


def load_test_set(dataset: "DatasetConfig") -> "tuple[torch.Tensor, torch.Tensor]":
    """Load the MNIST test set named by a run's `dataset` settings."""
    settings = (dataset.download, dataset.verify_checksums, dataset.normalize)
    return mnist_test_set(dataset.root, *settings)
