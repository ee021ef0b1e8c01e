"""Operations beside the app, without starting anything: the queue file and its state,
a deployment's settings and certificates, the engine's Ray."""

import json
import math
import os
import tomllib
from pathlib import Path

import pytest

from fedavg_mnist.checkpoint import CHECKPOINT_FILE
from fedavg_mnist.engine import RAY_ADDRESS, ray_of_its_own
from fedavg_mnist.errors import UserError
from fedavg_mnist.ops.campaign_queue import (
    DONE,
    LEFT,
    STARTED,
    cell_state,
    load_queue,
    select_cells,
    status_markdown,
)
from fedavg_mnist.ops.certificates import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    check_tls_certificates,
    make_tls_certificates,
)
from fedavg_mnist.ops.deployment import run_config_for, toml_value
from fedavg_mnist.records import RESULTS_FILE
from fedavg_mnist.settings import parse


@pytest.fixture
def queue_file(tmp_path: Path) -> Path:
    spec = {
        "runs_dir": str(tmp_path / "runs"),
        "common": ["model=mlp"],
        "cells": [
            {"name": f"table/{name}", "overrides": [f"lr={lr}"]}
            for name, lr in (("iid_a", 0.1), ("iid_b", 0.2), ("shards_a", 0.3))
        ],
    }
    path = tmp_path / "queue.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_a_queue_knows_each_cells_state_from_its_run_directory(queue_file: Path) -> None:
    queue = load_queue(queue_file)
    done, started, left = (queue.run_dir(cell) for cell in queue.cells)
    done.mkdir(parents=True)
    (done / RESULTS_FILE).write_text(json.dumps({"finished": True, "completed_rounds": 7}))
    started.mkdir(parents=True)
    (started / CHECKPOINT_FILE).write_bytes(b"")
    assert [cell_state(d) for d in (done, started, left)] == [DONE, STARTED, LEFT]
    table = status_markdown(queue)
    assert "| table/iid_a | done | 7 |" in table and "| table/shards_a | left | 0 |" in table


def test_cells_are_chosen_by_pattern_in_the_patterns_order(queue_file: Path) -> None:
    queue = load_queue(queue_file)
    names = [c.name for c in select_cells(queue, ["table/shards_*", "table/iid_*"])]
    assert names == ["table/shards_a", "table/iid_a", "table/iid_b"]
    with pytest.raises(UserError, match="no cell of the queue matches 'table/x'"):
        select_cells(queue, ["table/x"])


def test_a_queue_with_a_cell_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.yaml"
    cell = {"name": "a", "overrides": []}
    path.write_text(json.dumps({"runs_dir": "runs", "cells": [cell, cell]}))
    with pytest.raises(UserError, match="a cell name appears twice"):
        load_queue(path)


def test_a_deployments_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    """`--run-config` as `flwr run` takes it, plus K, the run directory and the data."""
    run_config = run_config_for("model.name='mlp' batch_size=inf", 4, tmp_path, tmp_path / "d")
    settings = tomllib.loads("\n".join(run_config.split(" ")))
    assert settings["batch_size"] == math.inf and settings["num_clients"] == 4
    assert settings["output_dir"] == str(tmp_path)
    assert toml_value(math.inf) == "inf" and toml_value("a b") == '"a b"'
    with pytest.raises(UserError, match="lr must be > 0"):
        run_config_for("lr=-1", 4, tmp_path, tmp_path)
    with pytest.raises(UserError, match="the deployment sets num_clients=4"):
        run_config_for("num_clients=10", 4, tmp_path, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_tls_certificates_made_for_a_run_are_complete_and_private(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_tls_certificates(certs, ["127.0.0.1"])
    check_tls_certificates(certs)
    assert (certs / SERVER_KEY).stat().st_mode & 0o077 == 0  # the key is the owner's alone
    (certs / SERVER_CERT).unlink()
    with pytest.raises(UserError, match=f"lacks {SERVER_CERT}"):
        check_tls_certificates(certs)
    assert (certs / CA_CERT).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_the_engines_ray_is_the_runs_own_unless_a_cluster_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RAY_ADDRESS, raising=False)
    ray_of_its_own()
    assert os.environ[RAY_ADDRESS] == "local"
    monkeypatch.setenv(RAY_ADDRESS, "127.0.0.1:6379")  # the user's cluster
    ray_of_its_own()
    assert os.environ[RAY_ADDRESS] == "127.0.0.1:6379"


def test_the_server_app_adjusts_its_processs_engine_for_its_run_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under `flwr run`: a Ray of the run's own, the wake-ups for the run's time."""
    from flwr.server.superlink.fleet.vce import vce_api

    from fedavg_mnist import engine

    loops = (vce_api.add_messages_to_queue, vce_api.put_message_into_state)
    monkeypatch.delenv(RAY_ADDRESS, raising=False)
    monkeypatch.setattr(engine, "engine_loaded", lambda: False)  # a deployment's ServerApp
    with engine.adjusted_engine(parse({})) as wakeups:
        assert wakeups is None and RAY_ADDRESS not in os.environ
    monkeypatch.setattr(engine, "engine_loaded", lambda: True)  # `flwr-simulation`
    with engine.adjusted_engine(parse({})) as wakeups:
        assert wakeups is not None and os.environ[RAY_ADDRESS] == "local"
        assert vce_api.add_messages_to_queue == wakeups.add_messages_to_queue
    assert (vce_api.add_messages_to_queue, vce_api.put_message_into_state) == loops
    assert os.environ[RAY_ADDRESS] == "local"  # an engine starting late still gets its own
    with engine.adjusted_engine(parse({"fast_polling": False})) as wakeups:
        assert wakeups is None and vce_api.add_messages_to_queue is loops[0]
