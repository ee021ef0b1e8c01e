"""The `ClientApp`'s handlers, called as Flower calls them: a message and a node's context."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedavg_mnist.client_app import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    identify,
    make_client_app,
    partition_data,
    train,
)
from fedavg_mnist.config import RunConfig
from fedavg_mnist.models import build_model
from fedavg_mnist.partitions import run_partitions, save_run_partitions
from fedavg_mnist.settings import parse

pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def config(synthetic_root: Path, tmp_path: Path) -> RunConfig:
    """A 2NN run of 4 clients on the synthetic IDX files, its partitions saved."""
    config = parse(
        {**TINY_SETTINGS, "dataset.root": str(synthetic_root), "output_dir": str(tmp_path / "run")}
    )
    Path(config.output_dir).mkdir()
    save_run_partitions(config)
    return config


def _context(partition_id: int, num_partitions: int = 4) -> Context:
    node_config: dict[str, bool | float | int | str] = {
        PARTITION_ID_KEY: partition_id,
        NUM_PARTITIONS_KEY: num_partitions,
    }
    return Context(
        run_id=1,
        node_id=10 + partition_id,
        node_config=node_config,
        state=RecordDict(),
        run_config={},
    )


def _train_message(server_round: int) -> Message:
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("mlp").state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=11, message_type=MessageType.TRAIN)


def _weights(reply: Message) -> np.ndarray:
    state = reply.content.array_records["arrays"].to_torch_state_dict()
    return torch.cat([tensor.flatten() for tensor in state.values()]).numpy()


def test_train_replies_with_its_partitions_model_examples_and_loss(config: RunConfig) -> None:
    reply = train(_train_message(1), _context(1), config)
    images, labels = partition_data(config, 1)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == len(labels) == len(run_partitions(config)[1]) == 100
    loss = metrics["train-loss"]
    assert isinstance(loss, float) and 0.0 < loss < 10.0
    assert reply.content.config_records["client"][PARTITION_ID_KEY] == 1
    assert not np.array_equal(_weights(reply), _weights(_train_message(1)))  # it trained


def test_local_shuffles_follow_the_run_seed_round_and_partition(config: RunConfig) -> None:
    """The same (seed, round, partition): the same update; change any: another one."""
    first = _weights(train(_train_message(1), _context(1), config))
    assert np.array_equal(first, _weights(train(_train_message(1), _context(1), config)))
    assert not np.array_equal(first, _weights(train(_train_message(2), _context(1), config)))
    other_seed = replace(config, seed=1)
    assert not np.array_equal(first, _weights(train(_train_message(1), _context(1), other_seed)))


def test_identify_tells_the_partition_and_how_many(config: RunConfig) -> None:
    query = Message(content=RecordDict(), dst_node_id=12, message_type=MessageType.QUERY)
    reply = identify(query, _context(2))
    report = reply.content.config_records["client"]
    assert (report[PARTITION_ID_KEY], report[NUM_PARTITIONS_KEY]) == (2, 4)


def test_the_app_runs_the_config_it_was_given(config: RunConfig) -> None:
    """The Hydra CLI's `ClientApp` ignores `Context.run_config`: it was given its config."""
    app = make_client_app(config)
    context = _context(0)
    context.run_config = {"num_rounds": "many"}  # `parse` would refuse it, were it read
    reply = app(_train_message(1), context)
    assert reply.content.metric_records["metrics"]["num-examples"] == 100
