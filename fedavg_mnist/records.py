"""A run's record: per-round history, `results.json` written atomically, the summary line."""

import json
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedavg_mnist.errors import UserError
from fedavg_mnist.progress import Progress
from fedavg_mnist.rounds_to_target import summarize
from fedavg_mnist.storage import append_line_durably, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from fedavg_mnist.config import RunConfig

RESULTS_FILE = "results.json"
ROUNDS_FILE = "rounds.jsonl"  # one JSON line per evaluated round, appended durably
SAVE_INTERVAL_S = 2.0
# 2: `rounds_to_target` is the best-so-far crossing and `first_round_at_target` the first
# round at target; version 1 files held the first round in `rounds_to_target` (or, the later
# ones, both as version 2 does). `migrate` reads both.
SCHEMA_VERSION = 2
_PACKAGES = ("fedavg-mnist", "flwr", "flwr-datasets", "torch", "numpy", "hydra-core", "omegaconf")
# Results before the partition registry recorded the flwr-datasets partitioner's settings.
_PARTITIONER_NAMES = {"IidPartitioner": "iid", "ShardPartitioner": "pathological"}


def partition_name(config: dict[str, Any]) -> str:
    """Return the partition's name in a recorded config (older ones: its partitioner's)."""
    partition = config["partition"]
    if isinstance(partition, dict):
        target = str(partition["_target_"]).rsplit(".", 1)[-1]
        return _PARTITIONER_NAMES.get(target, target)
    return str(partition)


def load_results(path: str | Path) -> dict[str, Any]:
    """Load a `results.json`, given the file or its run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        with open(path) as stream:
            document: dict[str, Any] = json.load(stream)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read results {path}: {err}") from err
    return migrate(document)


def migrate(document: dict[str, Any]) -> dict[str, Any]:
    """Bring a results document to `SCHEMA_VERSION`: its summary recomputed from its history.

    The history is the record; the summary fields are derived from it, so an older file's
    are recomputed rather than reinterpreted. A newer version than this code's is refused.
    """
    version = document.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UserError(
            f"results schema version {version!r} is newer than this code's ({SCHEMA_VERSION})"
        )
    if version < SCHEMA_VERSION and "history" in document and "target_accuracy" in document:
        document.update(summarize(document["history"], float(document["target_accuracy"])))
        document["schema_version"] = SCHEMA_VERSION
        document["migrated_from_schema_version"] = version
    return document


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the results."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def summary_line(results: dict[str, Any], path: Path) -> str:
    """One line: best accuracy, both readings of rounds to target, where the results are."""
    first, crossing = results["first_round_at_target"], results["rounds_to_target"]
    to_target = "not reached"
    if first is not None:
        to_target = f"first reached in round {first}, best-so-far crossing at {crossing:.1f}"
    privacy = ""
    if (spent := results.get("privacy")) is not None:
        epsilon = "∞" if spent["epsilon"] is None else f"{spent['epsilon']:.3g}"
        privacy = f"(ε={epsilon}, δ={spent['delta']:g})-DP per client; "
    return (
        f"best accuracy {results['best_accuracy']:.4f} (round {results['best_round']}); "
        f"target {results['target_accuracy']:.2%}: {to_target}; "
        f"{results['completed_rounds']} rounds in {results['wall_seconds']:.1f}s; "
        f"{privacy}results: {path}"
    )


class RunRecorder:
    """Keeps a run's history, appending each round durably to `rounds.jsonl`.

    `results.json` is rewritten atomically at most every `SAVE_INTERVAL_S` seconds, at
    checkpoints and at the end.
    """

    def __init__(
        self,
        config: "RunConfig",
        num_parameters: int,
        restored: Sequence[dict[str, Any]] = (),
        previous: dict[str, Any] | None = None,
    ) -> None:
        from fedavg_mnist.machine import machine_description

        self.output_dir = Path(config.output_dir)
        self.path = self.output_dir / RESULTS_FILE
        self.rounds_path = self.output_dir / ROUNDS_FILE
        self.target = config.target
        self.dp = config.dp if config.dp.enabled else None
        self.num_sampled, self.num_clients = config.num_sampled_clients, config.num_clients
        self.history: list[dict[str, Any]] = list(restored)
        self.progress = Progress(config.num_rounds)
        self.document: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "config": config.record(),
            "versions": library_versions(),
            "machines": [machine_description()],  # one per session that ran rounds
            "command": " ".join(sys.argv),
            "num_parameters": num_parameters,
            "target_accuracy": self.target,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": False,
            "history": self.history,
        }
        if previous is not None:
            self.document["started_at"] = previous.get("started_at")
            resumed = [*previous.get("resumed_after_rounds", []), len(self.history) - 1]
            self.document["resumed_after_rounds"] = resumed
            machines = previous.get("machines", [])
            self.document["machines"] = machines + [
                m for m in self.document["machines"] if m not in machines
            ]
        write_text_atomic(self.rounds_path, "".join(_json_line(r) for r in self.history))
        self._last_mark = time.perf_counter()
        self._last_save = float("-inf")

    def record_round(
        self,
        server_round: int,
        accuracy: float,
        loss: float,
        eval_seconds: float,
        clients: list[dict[str, Any]] | None = None,
    ) -> None:
        """Append one round's centralized evaluation, log it and save the results.

        `clients`: what each client of the round reported of its update.
        """
        now = time.perf_counter()
        seconds = now - self._last_mark
        self._last_mark = now
        record: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "seconds": seconds,
            "eval_seconds": eval_seconds,
            "time": time.time(),  # when the round's evaluation ended (Unix time)
        }
        if clients is not None:
            record["clients"] = clients
        self.history.append(record)
        append_line_durably(self.rounds_path, _json_line(record))
        self.progress.update(server_round, accuracy, loss, seconds)
        if now - self._last_save >= SAVE_INTERVAL_S:
            self.save()

    def save(self) -> None:
        """Write the results so far."""
        self.document.update(summarize(self.history, self.target))
        self.document["completed_rounds"] = max((r["round"] for r in self.history), default=0)
        self.document["wall_seconds"] = sum(r["seconds"] for r in self.history)
        if self.dp is not None:
            from fedavg_mnist.privacy import privacy_record

            self.document["privacy"] = privacy_record(
                self.dp, self.num_sampled, self.num_clients, self.document["completed_rounds"]
            )
        write_json_atomic(self.path, self.document)
        self._last_save = time.perf_counter()

    def finish(self) -> None:
        """Mark the run finished and save it."""
        self.progress.close()
        self.document["finished"] = True
        self.document["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.save()


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
