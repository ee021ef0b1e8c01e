import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from torch import nn

from fedavg_mnist.client_app import PARTITION_ID_KEY
from fedavg_mnist.config import StrategyConfig, num_sampled_clients
from fedavg_mnist.errors import ClientFailure, UserError
from fedavg_mnist.evaluation import evaluate
from fedavg_mnist.federation import check_node, discover_partitions
from fedavg_mnist.settings import parse
from fedavg_mnist.strategy import PaperSampling, make_strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _reply(arrays: dict[str, np.ndarray], num_examples: int, partition_id: int) -> Message:
    request = Message(
        content=RecordDict(), dst_node_id=1000 + partition_id, message_type=MessageType.TRAIN
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 0.1}),
            "client": ConfigRecord({PARTITION_ID_KEY: partition_id}),
        }
    )
    return Message(content=content, reply_to=request)


def _strategy(num_train_nodes: int, num_nodes: int = 10, seed: int = 0) -> PaperSampling:
    """The paper's FedAvg."""
    nodes = {p: 1000 + p for p in range(num_nodes)}
    return make_strategy(StrategyConfig(), num_train_nodes, nodes, seed)


def test_aggregate_is_the_sample_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    clients = [
        (
            {
                "w": rng.normal(size=(3, 4)).astype(np.float32),
                "b": rng.normal(size=4).astype(np.float32),
            },
            n,
            pid,
        )
        for n, pid in ((600, 4), (300, 1), (100, 7))
    ]
    arrays, metrics = _strategy(3).aggregate_train(1, [_reply(*c) for c in clients])
    assert arrays is not None and metrics is not None
    total = sum(n for _, n, _ in clients)
    for key in ("w", "b"):
        expected = sum(a[key].astype(np.float64) * n for a, n, _ in clients) / total
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.1)


def test_aggregate_does_not_depend_on_reply_order() -> None:
    rng = np.random.default_rng(1)
    clients = [({"w": rng.normal(size=1000).astype(np.float32)}, 600, pid) for pid in range(5)]
    strategy = _strategy(5)
    forward, _ = strategy.aggregate_train(1, [_reply(*c) for c in clients])
    backward, _ = strategy.aggregate_train(1, [_reply(*c) for c in reversed(clients)])
    assert forward is not None and backward is not None
    assert forward["w"].numpy().tobytes() == backward["w"].numpy().tobytes()


def test_a_failed_or_missing_client_fails_the_round() -> None:
    with pytest.raises(ClientFailure, match="1 of 2 clients replied"):
        _strategy(2).aggregate_train(3, [_reply({"w": np.zeros(2, np.float32)}, 10, 0)])


@pytest.mark.parametrize(
    ("fraction", "num_clients", "expected"),
    [(0.0, 100, 1), (0.1, 100, 10), (0.2, 100, 20), (0.5, 100, 50), (1.0, 100, 100), (0.1, 5, 1)],
)
def test_client_count_follows_the_paper(fraction: float, num_clients: int, expected: int) -> None:
    assert num_sampled_clients(fraction, num_clients) == expected


def test_sampling_is_seeded_per_round_and_without_replacement() -> None:
    strategy = _strategy(10, num_nodes=100, seed=3)
    rounds = [strategy.sample_partitions(r) for r in range(1, 6)]
    assert all(len(set(r)) == 10 and all(0 <= p < 100 for p in r) for r in rounds)
    assert len({tuple(r) for r in rounds}) == 5
    assert rounds == [_strategy(10, 100, 3).sample_partitions(r) for r in range(1, 6)]
    assert rounds[0] != _strategy(10, 100, 4).sample_partitions(1)


def test_configure_train_sends_the_model_to_the_sampled_nodes() -> None:
    strategy = _strategy(3, num_nodes=10, seed=0)
    arrays = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid=None))  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in messages) == [
        1000 + p for p in strategy.sample_partitions(2)
    ]
    assert all(m.content["config"]["server-round"] == 2 for m in messages)


def test_evaluate_reports_loss_and_accuracy() -> None:
    linear = nn.Linear(4, 2, bias=False)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0]]).reshape(3, 1, 2, 2)
    labels = torch.tensor([0, 1, 1])
    loss, accuracy = evaluate(model, images, labels, batch_size=2)
    assert accuracy == pytest.approx(2 / 3)
    expected = torch.nn.functional.cross_entropy(model(images), labels).item()
    assert loss == pytest.approx(expected, rel=1e-6)


def _node_report(partition_id: int, num_partitions: int, **resources: float) -> ConfigRecord:
    return ConfigRecord(
        {"partition-id": partition_id, "num-partitions": num_partitions, **resources}
    )


def test_a_node_of_another_federation_fails_the_run_at_once() -> None:
    cfg = parse({"num_clients": 4, "client_resources.num_cpus": 1})
    check_node(_node_report(2, 4, **{"num-cpus": 1.0, "num-gpus": 0.0}), cfg, gpus=0.0)
    check_node(_node_report(2, 4), cfg, gpus=0.0)  # a real SuperNode: no Ray resources
    with pytest.raises(UserError, match="holds partition 2 of 100, but num_clients .K. is 4"):
        check_node(_node_report(2, 100), cfg, gpus=0.0)
    with pytest.raises(UserError, match="has 2 CPUs and 0 GPUs, but client_resources asks"):
        check_node(_node_report(2, 4, **{"num-cpus": 2.0, "num-gpus": 0.0}), cfg, gpus=0.0)
    with pytest.raises(UserError, match='client-resources-num-gpus=0.25"'):
        check_node(_node_report(2, 4, **{"num-cpus": 1.0, "num-gpus": 0.0}), cfg, gpus=0.25)


def test_a_client_that_replies_with_an_error_fails_the_round() -> None:
    from flwr.app import Error

    request = Message(content=RecordDict(), dst_node_id=1003, message_type=MessageType.TRAIN)
    failed = Message(Error(code=0, reason="CUDA out of memory"), reply_to=request)
    good = _reply({"w": np.zeros(2, np.float32)}, 10, 0)
    with pytest.raises(ClientFailure, match="round 4: a client failed: CUDA out of memory"):
        _strategy(2).aggregate_train(4, [good, failed])


class _Federation:
    """Flower's grid as seen by `discover_partitions`: nodes connecting, QUERY replies."""

    def __init__(self, partitions: dict[int, int], num_partitions: int, arrive: int) -> None:
        self.partitions, self.num_partitions = partitions, num_partitions
        self.arrive, self.calls = arrive, 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        connected = sorted(self.partitions)
        return connected[: self.arrive * self.calls]  # nodes connect a few at a time

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            report = ConfigRecord(
                {"partition-id": self.partitions[node_id], "num-partitions": self.num_partitions}
            )
            replies.append(Message(content=RecordDict({"client": report}), reply_to=message))
        return replies


def test_discovery_maps_partitions_to_nodes_as_they_connect() -> None:
    cfg = parse({"num_clients": 4, "client_resources.num_cpus": 1})
    federation = _Federation({70 + p: 3 - p for p in range(4)}, 4, arrive=2)
    assert discover_partitions(federation, cfg, gpus=0.0) == {3: 70, 2: 71, 1: 72, 0: 73}  # type: ignore[arg-type]


def test_discovery_fails_at_once_in_the_wrong_federation() -> None:
    cfg = parse({"num_clients": 4, "client_resources.num_cpus": 1})
    federation = _Federation({70: 0, 71: 1}, 2, arrive=2)
    with pytest.raises(UserError, match="of 2, but num_clients .K. is 4"):
        discover_partitions(federation, cfg, gpus=0.0, timeout=600)  # type: ignore[arg-type]
    duplicated = _Federation({70: 0, 71: 0, 72: 2, 73: 3}, 4, arrive=4)
    with pytest.raises(UserError, match="two nodes hold partition 0"):
        discover_partitions(duplicated, cfg, gpus=0.0)  # type: ignore[arg-type]
