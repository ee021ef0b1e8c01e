"""Files a run keeps, written atomically: a reader finds the old file or the new, never half.

The one way every file of a run (results, rounds, checkpoint, partitions) and of the tools
beside it is replaced: written to a temporary file in the same folder, flushed to disk,
renamed over the old one. Whatever fails on the way removes the temporary file and ends in
one line naming the file and the operating system's reason.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fedavg_mnist.errors import UserError


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace `path` with what `write` writes to the binary stream it is given."""
    tmp_name = None
    try:
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8)."""
    write_atomic(path, lambda stream: stream.write(text.encode()))


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` with `document` as indented JSON."""
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def append_line_durably(path: Path, line: str) -> None:
    """Append one line to `path` and flush it to disk before returning."""
    try:
        with open(path, "a") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
