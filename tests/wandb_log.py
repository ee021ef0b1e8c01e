"""Read an offline W&B run's `.wandb` file back, as `wandb sync` does, without a server.

The file is a LevelDB-style log (W&B's `datastore`): a 7-byte header (`:W&B`, magic 0xBEE1,
version 0), then 32 KiB blocks of records, each a 7-byte header (CRC-32 of type and data,
little-endian length, type: full, first, middle or last fragment) and the data; a block's
tail shorter than a header is padding. Each whole record is a `wandb_internal_pb2.Record`.
"""

import json
import struct
import zlib
from pathlib import Path
from typing import Any

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # checksum, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Return every `Record` in the `.wandb` file at `path`, checking each checksum."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B log"
    records, pending, offset = [], b"", len(HEADER)
    while offset + RECORD_HEADER.size <= len(data):
        room = BLOCK_SIZE - offset % BLOCK_SIZE
        if room < RECORD_HEADER.size:
            offset += room
            continue
        checksum, length, kind = RECORD_HEADER.unpack_from(data, offset)
        if kind == 0 and length == 0:  # the writer's zero padding at a block's end
            offset += room
            continue
        body = data[offset + RECORD_HEADER.size : offset + RECORD_HEADER.size + length]
        assert zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF == checksum, "bad checksum"
        offset += RECORD_HEADER.size + length
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def run_file(run_folder: Path) -> Path:
    """The one `.wandb` file of an offline run folder (`wandb/offline-run-...`)."""
    (path,) = run_folder.glob("*.wandb")
    return path


def history(run_folder: Path) -> list[dict[str, Any]]:
    """Every logged step of the run, as the dict given to `wandb.log`."""
    rows = []
    for record in read_records(run_file(run_folder)):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if not key.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def run_record(run_folder: Path) -> Any:
    """The run's `RunRecord`: its ID, project, group and config."""
    for record in read_records(run_file(run_folder)):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {run_folder}")
