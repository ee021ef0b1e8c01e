import gzip
import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, synthetic_digits, write_idx, write_synthetic_mnist
from flwr_datasets.partitioner import IidPartitioner, ShardPartitioner

from fedavg_mnist import mnist as data
from fedavg_mnist.config import PARTITIONS, DatasetConfig, RunConfig
from fedavg_mnist.errors import UserError
from fedavg_mnist.mnist import (
    MNIST_MEAN,
    MNIST_STD,
    ensure_mnist,
    load_test_set,
    load_training_set,
    map_idx,
    mnist_test_set,
    mnist_training_set,
    read_idx,
)
from fedavg_mnist.overrides import compose_run_config
from fedavg_mnist.partitions import (
    PARTITIONERS,
    PARTITIONS_FILE,
    client_partitions,
    load_partitions,
    partition_indices,
    partitions_key,
    run_partitions,
    save_partitions,
    save_run_partitions,
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
    with pytest.raises(UserError, match="MNIST not found in .*Put the four IDX files") as err:
        ensure_mnist(tmp_path, download=True)
    message = str(err.value)
    assert "the download failed: http://127.0.0.1:9/" in message  # and says why
    assert "\n" not in message
    # no partial download is left, nor the folders the download created
    assert not (tmp_path / "MNIST").exists()
    assert tmp_path.is_dir()  # the root was there before: it stays


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
    with pytest.raises(UserError, match="MNIST not found.*SHA-256 mismatch"):
        ensure_mnist(tmp_path / "root", download=True)
    assert not (tmp_path / "root").exists()  # nothing kept, not even the folders it made
    # a folder that was there before the download is kept, still without the bad files
    raw = data.raw_dir(tmp_path / "root")
    raw.mkdir(parents=True)
    with pytest.raises(UserError, match="MNIST not found"):
        ensure_mnist(tmp_path / "root", download=True)
    assert raw.is_dir() and not list(raw.iterdir())


def whole_set_tensors(images: np.ndarray, normalize: bool = True) -> torch.Tensor:
    """The conversion the loader made before it mapped the file: the whole set at once."""
    tensor = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    if normalize:
        tensor.sub_(MNIST_MEAN).div_(MNIST_STD)
    return tensor.unsqueeze(1).contiguous()


def test_mnist_loads_as_mapped_bytes_and_normalized_tensors(synthetic_root: Path) -> None:
    training = mnist_training_set(str(synthetic_root), download=False, verify=False)
    images, labels = synthetic_digits(400, seed=1)
    assert isinstance(training.images, np.memmap) and training.images.dtype == np.uint8
    np.testing.assert_array_equal(training.images, images)
    np.testing.assert_array_equal(training.labels, labels)
    batch, batch_labels = training.examples(np.array([3, 0, 399]))
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == torch.float32
    expected = (images[3].astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(batch[0, 0].numpy(), expected, rtol=1e-6)
    assert (
        batch_labels.dtype == torch.int64 and batch_labels.tolist() == labels[[3, 0, 399]].tolist()
    )
    test_images, test_labels = mnist_test_set(str(synthetic_root), download=False, verify=False)
    assert test_images.shape == (100, 1, 28, 28) and test_labels.shape == (100,)
    # a run's dataset settings name the same files; normalize=false keeps pixels in [0, 1]
    dataset = DatasetConfig(
        root=str(synthetic_root), download=False, verify_checksums=False, normalize=False
    )
    unscaled, _ = load_training_set(dataset).examples(np.array([3]))
    np.testing.assert_allclose(unscaled[0, 0].numpy(), images[3] / 255, rtol=1e-6)
    np.testing.assert_array_equal(load_test_set(dataset)[1].numpy(), test_labels.numpy())


@pytest.mark.parametrize("normalize", [True, False])
def test_a_clients_examples_are_the_whole_set_conversions_bit_for_bit(
    synthetic_root: Path, normalize: bool
) -> None:
    """Histories do not change with the mapped set: a client trains on the same numbers."""
    training = mnist_training_set(str(synthetic_root), False, False, normalize)
    whole = whole_set_tensors(np.asarray(training.images), normalize)
    indices = np.random.default_rng(0).permutation(400)[:150]
    images, labels = training.examples(indices)
    assert torch.equal(images, whole[torch.from_numpy(indices)])
    assert torch.equal(labels, torch.from_numpy(training.labels.astype(np.int64))[indices])


def test_gz_files_are_mapped_through_one_plain_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, _ = synthetic_digits(9, seed=0)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=True)
    monkeypatch.setattr(data.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    first, second = map_idx(path, 3), map_idx(path, 3)
    np.testing.assert_array_equal(first, images)
    assert isinstance(first, np.memmap) and isinstance(second, np.memmap)
    assert first.filename == second.filename
    assert len(list((tmp_path / "tmp").rglob("*"))) == 2  # its folder and the one copy
    # where no copy can be written, the file is read into memory instead
    monkeypatch.setattr(data.tempfile, "tempdir", str(tmp_path / "missing" / "tmp"))
    fallback = map_idx(path, 3)
    assert not isinstance(fallback, np.memmap)
    np.testing.assert_array_equal(fallback, images)


def test_map_idx_checks_the_file_as_read_idx_does(tmp_path: Path) -> None:
    images, _ = synthetic_digits(5, seed=0)
    path = write_idx(tmp_path / "images", images)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match="bytes, header says"):
        map_idx(path, 3)
    labels = write_idx(tmp_path / "labels", images[:, 0, 0])
    assert map_idx(labels, 1).shape == (5,)
    with pytest.raises(UserError, match="bad IDX magic"):
        map_idx(write_idx(tmp_path / "images", images), 1)  # images read as labels


def test_reading_mnist_and_partitions_needs_no_torch() -> None:
    code = (
        "import sys, fedavg_mnist.mnist, fedavg_mnist.partitions; sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0


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
    partitioner = PARTITIONERS["pathological"](100, 0, RunConfig())
    parts = partition_indices(labels, partitioner, seed=0)
    assert [len(p) for p in parts] == [600] * 100
    assert len(np.unique(np.concatenate(parts))) == 60_000
    digits_per_client = [len(np.unique(labels[p])) for p in parts]
    assert max(digits_per_client) <= 4  # a shard of 300 may straddle two digits
    assert sum(d <= 2 for d in digits_per_client) >= 70
    again = partition_indices(labels, ShardPartitioner(100, "label", 2, None, seed=0), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_alpha_sets_how_many_labels_a_client_holds() -> None:
    labels = _labels(12_000)
    held = {}
    for alpha in (0.1, 1.0):
        settings = replace(RunConfig(), partition_alpha=alpha)
        parts = partition_indices(labels, PARTITIONERS["dirichlet"](20, 0, settings), seed=0)
        assert len(parts) == 20 and min(len(p) for p in parts) >= 10  # flwr-datasets' retry
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(12_000))  # each once
        held[alpha] = np.mean([len(np.unique(labels[p])) for p in parts])
    assert held[0.1] < 7 < 9.5 < held[1.0]


def test_classes_gives_each_client_k_labels() -> None:
    labels = _labels(12_000)
    for k in (1, 3):
        settings = replace(RunConfig(), partition_classes=k)
        parts = partition_indices(labels, PARTITIONERS["classes"](20, 0, settings), seed=0)
        assert {len(np.unique(labels[p])) for p in parts} == {k}
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(12_000))


def test_a_partition_that_cannot_be_drawn_is_one_line(synthetic_root: Path, tmp_path: Path):
    """400 examples for 50 clients of at least 10 each: the Dirichlet's retries give up."""
    cfg = _run_cfg(synthetic_root, tmp_path, "partition=dirichlet", "num_clients=50")
    with pytest.raises(UserError, match="^invalid partition: ") as raised:
        client_partitions(cfg)
    assert "\n" not in str(raised.value)


def test_unknown_partition_is_a_user_error() -> None:
    assert tuple(PARTITIONERS) == PARTITIONS  # the config accepts exactly the registry's names
    with pytest.raises(UserError, match="partition must be one of iid, pathological"):
        compose_run_config(["partition=NoSuchPartitioner"])


def _run_cfg(root: Path, output_dir: Path, *overrides: str) -> RunConfig:
    return compose_run_config(
        ["num_clients=4", f"dataset.root={root}", "dataset.verify_checksums=false", *overrides],
        str(output_dir),
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


def test_a_run_saves_its_partitions_once(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _run_cfg(synthetic_root, tmp_path, "partition=pathological", "seed=4")
    save_run_partitions(cfg)
    saved = load_partitions(tmp_path / PARTITIONS_FILE, partitions_key(cfg))
    assert saved is not None
    assert [p.tolist() for p in saved] == [p.tolist() for p in client_partitions(cfg)]
    # partitions saved for this key are kept, not drawn again
    swapped = (saved[1], saved[0], *saved[2:])
    save_partitions(tmp_path / PARTITIONS_FILE, partitions_key(cfg), swapped)
    save_run_partitions(cfg)
    kept = load_partitions(tmp_path / PARTITIONS_FILE, partitions_key(cfg))
    assert kept is not None and kept[0].tolist() == saved[1].tolist()
