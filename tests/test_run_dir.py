"""The run directory: one run at a time (a kernel lock no dead process keeps), and writes
that fail name the file and the reason, leaving the previous files whole."""

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedavg_mnist.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fedavg_mnist.errors import UserError
from fedavg_mnist.run_dir import LOCK_FILE, check_output_dir, hold_run_dir, release_run_dir


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    """Another process holding `run_dir`, as a run does, until it is killed."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from fedavg_mnist.run_dir import hold_run_dir; "
        f"hold_run_dir(Path({str(run_dir)!r})); print('held', flush=True); time.sleep(600)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_held_run_directory_is_refused_naming_its_holder_until_it_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        before = sorted(run_dir.iterdir())
        for check in (lambda: check_output_dir(run_dir), lambda: hold_run_dir(run_dir)):
            with pytest.raises(UserError, match=f"is in use by PID {holder.pid} on .* since "):
                check()
        assert sorted(run_dir.iterdir()) == before  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel lets go
        holder.wait()
    check_output_dir(run_dir)
    hold_run_dir(run_dir)
    assert f"PID {os.getpid()} on " in (run_dir / LOCK_FILE).read_text()
    release_run_dir(run_dir)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (tmpfs, mounted as root; skipped otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_named_and_the_last_checkpoint_stays_whole(small_disk: Path) -> None:
    small = {"w": torch.zeros(1000)}
    save_checkpoint(small_disk, Checkpoint(1, small, [{"round": 1}]))
    too_big = {"w": torch.zeros(1_000_000)}  # 4 MB on a 1 MiB disk
    with pytest.raises(UserError) as raised:
        save_checkpoint(small_disk, Checkpoint(2, too_big, [{"round": 2}]))
    assert str(raised.value) == (
        f"cannot write {small_disk / CHECKPOINT_FILE}: No space left on device"
    )
    assert load_checkpoint(small_disk).server_round == 1  # the previous one, whole
    assert sorted(path.name for path in small_disk.iterdir()) == [CHECKPOINT_FILE]  # no .tmp


def test_corrupt_checkpoint_and_results_are_told_in_one_line(tmp_path: Path) -> None:
    from fedavg_mnist.records import RESULTS_FILE, load_results

    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / RESULTS_FILE).write_text('{"history": [')
    with pytest.raises(UserError, match=f"cannot read checkpoint {tmp_path / CHECKPOINT_FILE}"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match=f"cannot read results {tmp_path / RESULTS_FILE}"):
        load_results(tmp_path)
