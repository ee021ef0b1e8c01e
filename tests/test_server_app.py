"""The `ServerApp`'s round loop over a federation of this process: no Ray, no SuperLink.

`InProcessGrid` hands each message to the `ClientApp`'s handlers of the node it is for, as
Flower's grids do over their transports; the server's code runs as under every launcher.
"""

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run, RunNotRunningException

from fedavg_mnist.client_app import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    client_seed,
    identify,
    partition_data,
    train,
)
from fedavg_mnist.config import RunConfig
from fedavg_mnist.evaluation import evaluate
from fedavg_mnist.local_training import train_local
from fedavg_mnist.mnist import load_test_set
from fedavg_mnist.models import build_model
from fedavg_mnist.partitions import run_partitions
from fedavg_mnist.server_app import (
    call_on_flower_exit,
    make_server_app,
    prepare_run,
    run_server,
)
from fedavg_mnist.settings import parse
from fedavg_mnist.strategy import sample_partitions

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class InProcessGrid(Grid):
    """K nodes in this process, node i holding partition i, answering as the `ClientApp`."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: config.num_clients},
                state=RecordDict(),
                run_config={},
            )
            for i in range(config.num_clients)
        }
        self.trained: list[list[int]] = []  # the partitions trained, round by round

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        round_partitions = []
        for message in messages:
            context = self.contexts[message.metadata.dst_node_id]
            if message.metadata.message_type == MessageType.TRAIN:
                round_partitions.append(int(context.node_config[PARTITION_ID_KEY]))
                replies.append(train(message, context, self.config))
            else:
                replies.append(identify(message, context))
        if round_partitions:
            self.trained.append(sorted(round_partitions))
        return replies


@pytest.fixture
def config(synthetic_root: Path, tmp_path: Path) -> RunConfig:
    """A 2NN run of 4 clients, 2 a round, on the synthetic IDX files."""
    return parse(
        {
            **TINY_SETTINGS,
            "checkpoint_every": 1,
            "dataset.root": str(synthetic_root),
            "output_dir": str(tmp_path / "run"),
        }
    )


def _paper_fedavg_round(config: RunConfig, state: dict, partitions: list[int], server_round: int):
    """One round of FedAvg written out: each client's E epochs of SGD, the weighted mean."""
    updates, sizes = [], []
    for partition_id in partitions:
        images, labels = partition_data(config, partition_id)
        model = build_model(config.model.name)
        model.load_state_dict(state)
        generator = torch.Generator().manual_seed(
            client_seed(config.seed, server_round, partition_id)
        )
        train_local(
            model, images, labels, config.local_epochs, config.batch_size, config.lr, generator
        )
        updates.append(model.state_dict())
        sizes.append(len(labels))
    total = sum(sizes)
    return {
        key: sum(update[key].double() * size for update, size in zip(updates, sizes, strict=True))
        / total
        for key in state
    }


def test_the_round_loop_is_fedavg_as_the_paper_writes_it(config: RunConfig, capsys) -> None:
    prepare_run(config)
    grid = InProcessGrid(config)
    run_server(grid, config)
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    assert results["finished"] is True and results["completed_rounds"] == 2
    assert [r["round"] for r in results["history"]] == [0, 1, 2]
    assert grid.trained == [sample_partitions(config.seed, r, 4, 2) for r in (1, 2)]

    torch.manual_seed(config.seed)  # the initial model, drawn as the server draws it
    state = build_model(config.model.name).state_dict()
    test_images, test_labels = load_test_set(config.dataset)
    for server_round, partitions in enumerate(grid.trained, start=1):
        averaged = _paper_fedavg_round(config, state, partitions, server_round)
        state = {key: value.float() for key, value in averaged.items()}
        model = build_model(config.model.name)
        model.load_state_dict(state)
        loss, accuracy = evaluate(model, test_images, test_labels, 250)
        recorded = results["history"][server_round]
        assert recorded["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert recorded["loss"] == pytest.approx(loss, rel=1e-4)
    assert "best accuracy" in capsys.readouterr().out


def test_a_resumed_run_continues_the_same_history(config: RunConfig) -> None:
    prepare_run(config)
    run_server(InProcessGrid(config), config)
    full = json.loads((Path(config.output_dir) / "results.json").read_text())["history"]

    first = replace(config, output_dir=config.output_dir + "-stopped", num_rounds=1)
    prepare_run(first)
    run_server(InProcessGrid(first), first)
    resumed = replace(first, num_rounds=2, resume=True)
    prepare_run(resumed)
    run_server(InProcessGrid(resumed), resumed)
    again = json.loads((Path(resumed.output_dir) / "results.json").read_text())["history"]
    strip = [(r["round"], r["accuracy"], r["loss"]) for r in full]
    assert [(r["round"], r["accuracy"], r["loss"]) for r in again] == strip


def test_the_app_under_flower_reads_its_config_from_the_run_config(
    config: RunConfig, tmp_path: Path
) -> None:
    """As under `flwr run` or a deployment: `Context.run_config` holds the settings."""
    app = make_server_app()
    settings = {
        **TINY_SETTINGS,
        "num_rounds": 1,
        "dataset.root": config.dataset.root,
        "output_dir": str(tmp_path / "flower-run"),
    }
    context = Context(run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=settings)
    grid = InProcessGrid(replace(config, output_dir=str(tmp_path / "flower-run"), num_rounds=1))
    app(grid, context)
    results = json.loads((tmp_path / "flower-run" / "results.json").read_text())
    assert results["config"]["num_rounds"] == 1 and results["finished"] is True
    assert np.isfinite(results["history"][1]["loss"])


class StoppedGrid(InProcessGrid):
    """A run `flwr stop` ends: the SuperLink refuses to train after `rounds` rounds."""

    def __init__(self, config: RunConfig, rounds: int) -> None:
        super().__init__(config)
        self.rounds = rounds

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        training = any(m.metadata.message_type == MessageType.TRAIN for m in messages)
        if training and len(self.trained) == self.rounds:
            raise RunNotRunningException  # what Flower's grid raises for a stopped run
        return super().send_and_receive(messages, timeout=timeout)


def test_a_stopped_run_checkpoints_its_newest_round(config: RunConfig) -> None:
    """No checkpoint falls due after round 0, yet the round before the stop is kept."""
    config = replace(config, num_rounds=5, checkpoint_every=0)
    prepare_run(config)
    with pytest.raises(RunNotRunningException):
        run_server(StoppedGrid(config, rounds=3), config)
    checkpoint = torch.load(Path(config.output_dir) / "checkpoint.pt", weights_only=True)
    assert checkpoint["server_round"] == 3
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    assert results["finished"] is False and results["completed_rounds"] == 3


def test_flowers_exit_calls_the_stop_actions_where_its_api_is_as_expected(monkeypatch) -> None:
    import flwr.supercore.exit as flower_exit
    from flwr.supercore.exit import exit_handler

    calls: list[str] = []
    monkeypatch.setattr(exit_handler, "registered_exit_handlers", [])
    assert call_on_flower_exit([lambda: calls.append("checkpoint")])
    exit_handler.trigger_exit_handlers(run_before_force_exit=True)  # as `flwr_exit` does
    assert calls == ["checkpoint"]

    def other_signature(handler_list: list) -> None:  # a Flower whose API moved on
        raise AssertionError("must not be called")

    monkeypatch.setattr(flower_exit, "add_exit_handler", other_signature)
    assert not call_on_flower_exit([lambda: calls.append("again")])


def test_each_round_records_what_its_clients_reported(config: RunConfig) -> None:
    """Per client and round: partition, examples, local loss (first and last epoch), time."""
    config = replace(config, local_epochs=2)
    prepare_run(config)
    grid = InProcessGrid(config)
    run_server(grid, config)
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    lines = (Path(config.output_dir) / "rounds.jsonl").read_text().splitlines()
    assert "clients" not in results["history"][0]  # round 0: the initial model, no clients
    sizes = {p: len(part) for p, part in enumerate(run_partitions(config))}
    for server_round, trained in enumerate(grid.trained, start=1):
        clients = results["history"][server_round]["clients"]
        assert json.loads(lines[server_round])["clients"] == clients
        assert [c["partition"] for c in clients] == trained
        for client in clients:
            assert client["examples"] == sizes[client["partition"]]
            assert client["train_seconds"] > 0
            first, last = client["train_loss_first_epoch"], client["train_loss_last_epoch"]
            assert client["train_loss"] == pytest.approx((first + last) / 2, rel=1e-4)
            assert last < first  # E=2 on the synthetic digits: the second epoch learns
