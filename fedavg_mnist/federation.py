"""Which node holds which partition: asked of every node as it connects, checked at once.

Under every launcher a node is told its partition (`partition-id`, `num-partitions` in its
node config); the server asks each node for it before the first round, and a federation
that does not match the run (another K, other Ray resources) fails at its first reply.
"""

import time
from typing import cast

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedavg_mnist.client_app import (
    NUM_CPUS_KEY,
    NUM_GPUS_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
)
from fedavg_mnist.config import RunConfig
from fedavg_mnist.errors import ClientFailure, UserError

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
