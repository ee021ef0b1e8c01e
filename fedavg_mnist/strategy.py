"""The paper's FedAvg as a Flower strategy: the same m partitions per (seed, round), always.

Flower's `FedAvg` does the arithmetic (the average weighted by each client's examples); this
strategy chooses which clients train, and finds which node holds which partition.
"""

import time
from collections.abc import Iterable
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedavg_mnist.client_app import (
    NUM_CPUS_KEY,
    NUM_GPUS_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    RAY_NODE_KEY,
    reported_partition_id,
)
from fedavg_mnist.config import RunConfig
from fedavg_mnist.errors import ClientFailure, UserError


class PaperFedAvg(FedAvg):
    """FedAvg as in McMahan et al.: exactly m = max(round(C*K), 1) clients per round.

    Flower's FedAvg samples max(int(fraction_train * K), min_train_nodes) nodes with
    Python's `random` over node IDs, which are random in every run. This strategy
    samples data partitions instead, from an RNG derived from (seed, round), so a run
    is reproducible and resumable; replies are averaged in partition order, weighted
    by `num-examples` as Flower's FedAvg does.

    Parameters
    ----------
    num_train_nodes : int
        m, the number of clients trained each round.
    node_of_partition : dict[int, int]
        Node ID holding each partition ID (see `discover_partitions`).
    seed : int
        The run's seed.
    rounds_done : int (default: 0)
        Rounds completed before this start (when resuming): Flower's round r is the run's
        round `rounds_done + r`.

    """

    def __init__(
        self,
        num_train_nodes: int,
        node_of_partition: dict[int, int],
        seed: int,
        rounds_done: int = 0,
    ) -> None:
        num_nodes = len(node_of_partition)
        super().__init__(
            fraction_train=num_train_nodes / num_nodes,
            fraction_evaluate=0.0,
            min_train_nodes=num_train_nodes,
            min_available_nodes=num_nodes,
        )
        self.num_train_nodes = num_train_nodes
        self.node_of_partition = node_of_partition
        self.ray_nodes: set[str] = set()  # the Ray nodes that trained clients, in a simulation
        self.seed = seed
        self.rounds_done = rounds_done

    def sample_partitions(self, server_round: int) -> list[int]:
        """Return the sorted partition IDs trained in `server_round`."""
        rng = np.random.default_rng([self.seed, server_round])
        chosen = rng.choice(len(self.node_of_partition), self.num_train_nodes, replace=False)
        return sorted(int(p) for p in chosen)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to this round's m sampled clients."""
        server_round += self.rounds_done
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [
            Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node_id)
            for node_id in (self.node_of_partition[p] for p in self.sample_partitions(server_round))
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the replies in partition order; a failed client fails the run."""
        server_round += self.rounds_done
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                raise ClientFailure(f"round {server_round}: a client failed: {reply.error.reason}")
        if len(replies) != self.num_train_nodes:
            raise ClientFailure(
                f"round {server_round}: {len(replies)} of {self.num_train_nodes} clients replied"
            )
        replies.sort(key=lambda reply: reported_partition_id(reply.content))
        for reply in replies:
            if RAY_NODE_KEY in (client := reply.content.config_records["client"]):
                self.ray_nodes.add(cast(str, client[RAY_NODE_KEY]))
        return super().aggregate_train(server_round, replies)


FEDERATION_HINT = (
    'under flwr run, set the simulation with --federation-config "num-supernodes={k} '
    'client-resources-num-cpus={cpus} client-resources-num-gpus={gpus}"; a deployment '
    'needs K SuperNodes started with --node-config "partition-id=<i> num-partitions={k}"'
)


def check_node(report: ConfigRecord, config: RunConfig, gpus: float) -> None:
    """Fail at once if a node's partitioning or Ray resources are not what the run needs."""
    hint = FEDERATION_HINT.format(
        k=config.num_clients, cpus=config.client_resources.num_cpus, gpus=gpus
    )
    num_partitions = cast(int, report.get(NUM_PARTITIONS_KEY, -1))
    if num_partitions != config.num_clients:
        raise UserError(
            f"a node holds partition {report.get(PARTITION_ID_KEY)!r} of {num_partitions}, "
            f"but num_clients (K) is {config.num_clients}: {hint}"
        )
    if NUM_CPUS_KEY in report:  # a simulated client: Ray reserved these for it
        given = (cast(float, report[NUM_CPUS_KEY]), cast(float, report[NUM_GPUS_KEY]))
        if given != (config.client_resources.num_cpus, gpus):
            raise UserError(
                f"each simulated client has {given[0]:g} CPUs and {given[1]:g} GPUs, but "
                f"client_resources asks for {config.client_resources.num_cpus} and {gpus:g}: {hint}"
            )


def discover_partitions(
    grid: Grid, config: RunConfig, gpus: float, timeout: float = 600.0
) -> dict[int, int]:
    """Ask each node for its partition ID as it connects; return partition ID -> node ID.

    The first reply shows whether the federation is the run's (K partitions, the client
    resources asked for); a wrong one fails at once instead of waiting for K nodes.
    """
    deadline = time.monotonic() + timeout
    node_of_partition: dict[int, int] = {}
    asked: set[int] = set()
    while len(node_of_partition) < config.num_clients:
        new_nodes = [node_id for node_id in grid.get_node_ids() if node_id not in asked]
        if not new_nodes:
            if time.monotonic() > deadline:
                raise ClientFailure(
                    f"only {len(node_of_partition)} of {config.num_clients} nodes connected "
                    f"within {timeout:g} s"
                )
            time.sleep(0.1)
            continue
        asked.update(new_nodes)
        queries = [
            Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY)
            for node_id in new_nodes
        ]
        for reply in grid.send_and_receive(queries, timeout=max(deadline - time.monotonic(), 1)):
            if reply.has_error():
                raise ClientFailure(f"a node failed to report its partition: {reply.error.reason}")
            report = reply.content.config_records["client"]
            check_node(report, config, gpus)
            partition_id = cast(int, report[PARTITION_ID_KEY])
            if partition_id in node_of_partition or not 0 <= partition_id < config.num_clients:
                raise UserError(
                    f"two nodes hold partition {partition_id}, or it is not in 0..K-1 "
                    f"(K={config.num_clients}): give each node its own partition-id"
                )
            node_of_partition[partition_id] = reply.metadata.src_node_id
    return node_of_partition
