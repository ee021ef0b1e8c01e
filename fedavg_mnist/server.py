"""The server: FedAvg sampling the paper's m clients, centralized evaluation, the `ServerApp`."""

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
    UserConfig,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .client import (
    NUM_CPUS_KEY,
    NUM_GPUS_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    RAY_NODE_KEY,
    reported_partition_id,
)
from .config import gpus_per_client, num_sampled_clients, run_settings, validate
from .errors import ClientFailure, RunFailure, UserError
from .evaluation import EvaluationQueue, TargetReached, evaluate
from .mnist import load_data
from .models import autocast, build_model, num_parameters, place_model, resolve_device
from .partitions import save_run_partitions
from .polling import wake_on_messages
from .results import RunRecorder, load_results, summary_line
from .run_dir import check_run_dir


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


def check_node(report: ConfigRecord, cfg: DictConfig, gpus: float) -> None:
    """Fail at once if a node's partitioning or Ray resources are not what the run needs."""
    hint = FEDERATION_HINT.format(k=cfg.num_clients, cpus=cfg.client_resources.num_cpus, gpus=gpus)
    num_partitions = cast(int, report.get(NUM_PARTITIONS_KEY, -1))
    if num_partitions != cfg.num_clients:
        raise UserError(
            f"a node holds partition {report.get(PARTITION_ID_KEY)!r} of {num_partitions}, "
            f"but num_clients (K) is {cfg.num_clients}: {hint}"
        )
    if NUM_CPUS_KEY in report:  # a simulated client: Ray reserved these for it
        given = (cast(float, report[NUM_CPUS_KEY]), cast(float, report[NUM_GPUS_KEY]))
        if given != (cfg.client_resources.num_cpus, gpus):
            raise UserError(
                f"each simulated client has {given[0]:g} CPUs and {given[1]:g} GPUs, but "
                f"client_resources asks for {cfg.client_resources.num_cpus} and {gpus:g}: {hint}"
            )


def discover_partitions(
    grid: Grid, cfg: DictConfig, gpus: float, timeout: float = 600.0
) -> dict[int, int]:
    """Ask each node for its partition ID as it connects; return partition ID -> node ID.

    The first reply shows whether the federation is the run's (K partitions, the client
    resources asked for); a wrong one fails at once instead of waiting for K nodes.
    """
    deadline = time.monotonic() + timeout
    node_of_partition: dict[int, int] = {}
    asked: set[int] = set()
    while len(node_of_partition) < cfg.num_clients:
        new_nodes = [node_id for node_id in grid.get_node_ids() if node_id not in asked]
        if not new_nodes:
            if time.monotonic() > deadline:
                raise ClientFailure(
                    f"only {len(node_of_partition)} of {cfg.num_clients} nodes connected "
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
            check_node(report, cfg, gpus)
            partition_id = cast(int, report[PARTITION_ID_KEY])
            if partition_id in node_of_partition or not 0 <= partition_id < cfg.num_clients:
                raise UserError(
                    f"two nodes hold partition {partition_id}, or it is not in 0..K-1 "
                    f"(K={cfg.num_clients}): give each node its own partition-id"
                )
            node_of_partition[partition_id] = reply.metadata.src_node_id
    return node_of_partition


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG, which draws the initial model.

    Every later draw (sampling, shuffling, partitions) comes from a generator derived from
    the seed and the round, so no global RNG state needs saving in a checkpoint.
    """
    torch.manual_seed(seed)


def start_run(cfg: DictConfig) -> None:
    """Make the checks every run makes before it writes anything; save its partitions."""
    validate(cfg)
    check_run_dir(cfg)
    save_run_partitions(cfg)


def run_server(grid: Grid, context: Context, fallback: UserConfig | None = None) -> None:
    """Run FedAvg for `num_rounds`, evaluating the global model on the test set each round.

    The global model and history are checkpointed after round 0 and every
    `checkpoint_every` rounds; with `resume`, the run continues after its last checkpoint.
    """
    cfg = run_settings(context, fallback)
    start_run(cfg)
    print(f"results: {cfg.output_dir}", flush=True)
    if cfg.fast_polling:
        wake_on_messages(grid)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    output_dir = Path(cfg.output_dir)
    data = load_data(cfg)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    model = build_model(cfg.model.name, cfg.model.init)
    if cfg.resume:
        checkpoint = load_checkpoint(output_dir)
        rounds_done, initial_state = checkpoint.server_round, checkpoint.state_dict
        recorder = RunRecorder(
            cfg, num_parameters(model), checkpoint.history, load_results(output_dir)
        )
    else:
        rounds_done, initial_state = 0, model.state_dict()
        recorder = RunRecorder(cfg, num_parameters(model))
    initial_arrays = ArrayRecord(initial_state)
    place_model(model, device)

    def evaluate_round(server_round: int, state: dict[str, torch.Tensor]) -> bool:
        """Evaluate, record and checkpoint one round; True if the run stops at it."""
        model.load_state_dict(state)
        started = time.perf_counter()
        with autocast(cfg.precision, device):
            loss, accuracy = evaluate(model, test_images, test_labels, cfg.eval_batch_size)
        recorder.record_round(server_round, accuracy, loss, time.perf_counter() - started)
        reached = cfg.stop_at_target and server_round > 0 and accuracy >= recorder.target
        every = cfg.checkpoint_every
        if reached or server_round in (0, cfg.num_rounds) or (every and server_round % every == 0):
            save_checkpoint(output_dir, Checkpoint(server_round, state, recorder.history))
            recorder.save()
        return reached

    evaluations = EvaluationQueue(evaluate_round)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += rounds_done
        if not (cfg.resume and server_round == rounds_done):  # else evaluated before the stop
            evaluations.submit(server_round, arrays.to_torch_state_dict())
        return None

    gpus = gpus_per_client(cfg.client_resources.num_gpus, device.type)
    strategy = PaperFedAvg(
        num_train_nodes=num_sampled_clients(cfg.client_fraction, cfg.num_clients),
        node_of_partition=discover_partitions(grid, cfg, gpus),
        seed=cfg.seed,
        rounds_done=rounds_done,
    )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=cfg.num_rounds - rounds_done,
            evaluate_fn=evaluate_global,
        )
    except TargetReached:
        pass
    evaluations.finish()
    recorder.document["ray_nodes"] = sorted(strategy.ray_nodes)
    recorder.finish()
    print(summary_line(recorder.document, recorder.path), flush=True)


class OneLineFailures(logging.Filter):
    """Show a `RunFailure` that Flower logs with its traceback as one `error:` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of a `RunFailure`, keep its message."""
        failure = record.exc_info[1] if record.exc_info else None
        if isinstance(failure, RunFailure):
            record.msg, record.args = "error: %s", (failure,)
            record.exc_info = record.exc_text = None
        return True


def make_server_app(run_config: UserConfig | None = None) -> ServerApp:
    """Build the `ServerApp`; `run_config` is used where `Context.run_config` has no value.

    A `RunFailure` ends the run as failed (Flower's exit code and status) with its one line
    in the run's log; the Hydra CLI prints the same line.
    """
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        flower_logger = logging.getLogger("flwr")
        if not any(isinstance(f, OneLineFailures) for f in flower_logger.filters):
            flower_logger.addFilter(OneLineFailures())
        run_server(grid, context, run_config)

    return app


app = make_server_app()
