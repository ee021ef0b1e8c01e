import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, synthetic_digits, write_idx, write_synthetic_mnist
from flwr_datasets.partitioner import IidPartitioner, ShardPartitioner
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fedavg_mnist import mnist as data
from fedavg_mnist.config import register_schema
from fedavg_mnist.errors import UserError
from fedavg_mnist.mnist import MNIST_MEAN, MNIST_STD, ensure_mnist, load_mnist, read_idx
from fedavg_mnist.partitions import (
    PARTITIONS_FILE,
    client_partitions,
    load_partitions,
    make_partitioner,
    partition_indices,
    partitions_key,
    run_partitions,
    save_partitions,
)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images, labels = synthetic_digits(7, seed=0)
    image_path = write_idx(tmp_path / "images-idx3-ubyte", images, gz=gz)
    label_path = write_idx(tmp_path / "labels-idx1-ubyte", labels, gz=gz)
    np.testing.assert_array_equal(read_idx(image_path, 3), images)
    np.testing.assert_array_equal(read_idx(label_path, 1), labels)


def test_read_idx_rejects_truncated_file(tmp_path: Path) -> None:
    images, _ = synthetic_digits(5, seed=0)
    path = write_idx(tmp_path / "images-idx3-ubyte", images)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt MNIST file .* bytes, header says"):
        read_idx(path, 3)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    _, labels = synthetic_digits(5, seed=0)
    path = write_idx(tmp_path / "labels-idx1-ubyte", labels)
    content = bytearray(path.read_bytes())
    content[2] = 0x0D  # float32 instead of unsigned byte
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match="bad IDX magic"):
        read_idx(path, 1)


def test_read_idx_rejects_images_read_as_labels(tmp_path: Path) -> None:
    images, _ = synthetic_digits(5, seed=0)
    path = write_idx(tmp_path / "images-idx3-ubyte", images)
    with pytest.raises(UserError, match="expected 00000801"):
        read_idx(path, 1)


def test_missing_files_name_the_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path.resolve() / "MNIST" / "raw") in message
    for name in data.MNIST_SHA256:
        assert name in message
    assert "\n" not in message


def test_failed_download_ends_in_the_same_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(UserError, match="MNIST not found: put"):
        ensure_mnist(tmp_path, download=True)
    assert not list((tmp_path / "MNIST" / "raw").glob(".*part*"))


def test_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    write_synthetic_mnist(tmp_path)
    with pytest.raises(UserError, match="SHA-256 does not match"):
        ensure_mnist(tmp_path, download=False, verify=True)
    assert len(ensure_mnist(tmp_path, download=False, verify=False)) == 4


def test_download_verifies_and_stores_gz(tmp_path: Path, monkeypatch) -> None:
    """The download path against a local mirror (file:// URLs) after a dead one."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images, labels = synthetic_digits(20, seed=3)
    digests = {}
    for name in data.MNIST_SHA256:
        array = images if "images" in name else labels
        path = write_idx(mirror / name, array, gz=True)
        digests[name] = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    monkeypatch.setattr(data, "MNIST_SHA256", digests)
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/", f"file://{mirror}/"))
    paths = ensure_mnist(tmp_path / "root", download=True, verify=True)
    assert sorted(paths) == sorted(digests)
    raw = data.raw_dir(tmp_path / "root")
    assert all(path.suffix == ".gz" and path.parent == raw for path in paths.values())
    np.testing.assert_array_equal(read_idx(paths["train-images-idx3-ubyte"], 3), images)


def test_download_with_wrong_checksum_is_not_kept(tmp_path: Path, monkeypatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _, labels = synthetic_digits(20, seed=3)
    for name in data.MNIST_SHA256:
        write_idx(mirror / name, labels, gz=True)
    monkeypatch.setattr(data, "MNIST_MIRRORS", (f"file://{mirror}/",))
    with pytest.raises(UserError, match="MNIST not found"):
        ensure_mnist(tmp_path / "root", download=True)
    assert not list(data.raw_dir(tmp_path / "root").iterdir())


def test_load_mnist_normalizes_into_tensors(synthetic_root: Path) -> None:
    mnist = load_mnist(str(synthetic_root), download=False, verify=False)
    images, labels = synthetic_digits(400, seed=1)
    assert mnist.train_images.shape == (400, 1, 28, 28)
    assert mnist.train_images.dtype == torch.float32
    assert mnist.test_images.shape == (100, 1, 28, 28)
    expected = (images[3].astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(mnist.train_images[3, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(mnist.train_labels.numpy(), labels)


def _labels(num: int = 60_000) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, num)


def test_iid_partition_sizes_disjoint_union_and_determinism() -> None:
    labels = _labels()
    parts = partition_indices(labels, IidPartitioner(num_partitions=100), seed=5)
    assert [len(p) for p in parts] == [600] * 100
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == 60_000
    again = partition_indices(labels, IidPartitioner(num_partitions=100), seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, IidPartitioner(num_partitions=100), seed=6)
    assert not np.array_equal(parts[0], other[0])
    # IID: each client sees (nearly) all ten digits
    assert min(len(np.unique(labels[p])) for p in parts) >= 8


def test_pathological_partition_is_two_shards_of_sorted_labels() -> None:
    labels = _labels()
    partitioner = make_partitioner(
        {
            "_target_": "flwr_datasets.partitioner.ShardPartitioner",
            "num_partitions": 100,
            "partition_by": "label",
            "num_shards_per_partition": 2,
            "shard_size": None,
            "seed": 0,
        }
    )
    parts = partition_indices(labels, partitioner, seed=0)
    assert [len(p) for p in parts] == [600] * 100
    assert len(np.unique(np.concatenate(parts))) == 60_000
    digits_per_client = [len(np.unique(labels[p])) for p in parts]
    assert max(digits_per_client) <= 4  # a shard of 300 may straddle two digits
    assert sum(d <= 2 for d in digits_per_client) >= 70
    again = partition_indices(labels, ShardPartitioner(100, "label", 2, None, seed=0), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_unknown_partitioner_class_is_a_user_error() -> None:
    with pytest.raises(UserError, match="invalid partition"):
        make_partitioner({"_target_": "flwr_datasets.partitioner.NoSuchPartitioner"})


def _run_cfg(root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    register_schema()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "num_clients=4",
                f"dataset.root={root}",
                "dataset.verify_checksums=false",
                f"output_dir={output_dir}",
                *overrides,
            ],
        )


def test_saved_partitions_round_trip_and_are_keyed(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _run_cfg(synthetic_root, tmp_path)
    parts = client_partitions(cfg)
    path = tmp_path / PARTITIONS_FILE
    save_partitions(path, partitions_key(cfg), parts)
    loaded = load_partitions(path, partitions_key(cfg))
    assert loaded is not None
    assert [p.tolist() for p in loaded] == [p.tolist() for p in parts]
    other_seed = _run_cfg(synthetic_root, tmp_path, "seed=1")
    assert partitions_key(other_seed) != partitions_key(cfg)
    assert load_partitions(path, partitions_key(other_seed)) is None
    assert load_partitions(tmp_path / "missing.npz", partitions_key(cfg)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", PARTITIONS_FILE]  # no temp file


def test_workers_read_the_runs_saved_partitions(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _run_cfg(synthetic_root, tmp_path, "seed=3")
    computed = client_partitions(cfg)
    swapped = (computed[1], computed[0], *computed[2:])
    save_partitions(tmp_path / PARTITIONS_FILE, partitions_key(cfg), swapped)
    assert run_partitions(cfg)[0].tolist() == computed[1].tolist()
    elsewhere = _run_cfg(synthetic_root, tmp_path / "no-file", "seed=3")
    assert run_partitions(elsewhere)[0].tolist() == computed[0].tolist()
