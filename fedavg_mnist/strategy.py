"""Flower's strategies on the paper's protocol: the same m partitions per (seed, round).

`make_strategy` builds any strategy of `STRATEGIES` (Flower's own classes, their arithmetic
untouched) with `PaperSampling` mixed in: it chooses which clients train, from an RNG
derived from (seed, round), so two strategies' runs with one seed train the same clients on
the same partitions each round (paired comparisons), and a run is reproducible and
resumable. FedAvg is the paper's (McMahan et al.); the others are there to compare with it.
"""

from collections.abc import Iterable
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)

from fedavg_mnist.client_app import (
    FIRST_EPOCH_LOSS_KEY,
    LAST_EPOCH_LOSS_KEY,
    RAY_NODE_KEY,
    reported_partition_id,
)
from fedavg_mnist.config import STRATEGY_SETTINGS, DifferentialPrivacyConfig, StrategyConfig
from fedavg_mnist.errors import ClientFailure, UserError

# Each strategy's Flower class; its settings are `config.STRATEGY_SETTINGS`, passed on under
# Flower's argument names.
STRATEGIES: dict[str, type[FedAvg]] = {
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedprox": FedProx,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedyogi": FedYogi,
}
FLOWER_ARGUMENT = {"trim_beta": "beta"}  # where Flower's name differs from the setting's


def sample_partitions(seed: int, server_round: int, num_partitions: int, m: int) -> list[int]:
    """Return the sorted partition IDs that train in `server_round`, m of them.

    They are drawn from an RNG seeded with (seed, round) alone, whichever strategy asks.
    """
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(num_partitions, m, replace=False))


class SampledNodes(Grid):
    """The grid as a strategy's own node sampling sees it: only this round's m nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self.grid, self.node_ids = grid, node_ids

    @property
    def run(self) -> Any:  # noqa: D102 - the grid's
        return self.grid.run

    def set_run(self, run: Any) -> None:  # noqa: D102
        self.grid.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Return the nodes sampled for this round."""
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(message_ids)

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


def client_record(reply: Message) -> dict[str, Any]:
    """Return what a client reported of its update: partition, examples, losses, time."""
    metrics = reply.content.metric_records["metrics"]

    def rounded(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None else float(f"{cast(float, value):.6g}")

    return {
        "partition": reported_partition_id(reply.content),
        "examples": int(cast(int, metrics["num-examples"])),
        "train_loss": rounded("train-loss"),
        "train_loss_first_epoch": rounded(FIRST_EPOCH_LOSS_KEY),
        "train_loss_last_epoch": rounded(LAST_EPOCH_LOSS_KEY),
        "train_seconds": rounded("train-seconds"),
    }


class PaperSampling(FedAvg):
    """Mixed in before a Flower strategy: exactly m = max(round(C*K), 1) clients per round.

    Flower's strategies sample max(int(fraction_train * K), min_train_nodes) nodes with
    Python's `random` over node IDs, which are random in every run. This mixin samples
    data partitions instead (`sample_partitions`) and lets the strategy configure the
    round for those nodes only; replies reach the strategy's arithmetic in partition order.

    Parameters
    ----------
    num_train_nodes : int
        m, the number of clients trained each round.
    node_of_partition : dict[int, int]
        Node ID holding each partition ID (see `federation.discover_partitions`).
    seed : int
        The run's seed.
    rounds_done : int (default: 0)
        Rounds completed before this start (when resuming): Flower's round r is the run's
        round `rounds_done + r`.
    **strategy_settings
        The strategy's own arguments (`proximal_mu`, `eta`, ...).

    """

    def __init__(
        self,
        num_train_nodes: int,
        node_of_partition: dict[int, int],
        seed: int,
        rounds_done: int = 0,
        **strategy_settings: Any,
    ) -> None:
        super().__init__(
            fraction_train=1.0,  # of the nodes `SampledNodes` shows: this round's m
            fraction_evaluate=0.0,  # the server evaluates the global model centrally
            min_train_nodes=num_train_nodes,
            min_available_nodes=num_train_nodes,
            **strategy_settings,
        )
        self.num_train_nodes = num_train_nodes
        self.node_of_partition = node_of_partition
        self.partition_of_node = {node: p for p, node in node_of_partition.items()}
        self.ray_nodes: set[str] = set()  # the Ray nodes that trained clients, in a simulation
        self.client_records: dict[int, list[dict[str, Any]]] = {}  # per round, until recorded
        self.seed = seed
        self.rounds_done = rounds_done

    def sample_partitions(self, server_round: int) -> list[int]:
        """Return the sorted partition IDs trained in `server_round`."""
        num_partitions = len(self.node_of_partition)
        return sample_partitions(self.seed, server_round, num_partitions, self.num_train_nodes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Have the strategy send the global model to this round's m sampled clients."""
        server_round += self.rounds_done
        nodes = [self.node_of_partition[p] for p in self.sample_partitions(server_round)]
        messages = super().configure_train(server_round, arrays, config, SampledNodes(grid, nodes))
        return sorted(messages, key=lambda m: self.partition_of_node[m.metadata.dst_node_id])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Pass the replies in partition order to the strategy; a failed client fails the run."""
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
        self.client_records[server_round] = [client_record(reply) for reply in replies]
        return super().aggregate_train(server_round, replies)


# What Flower's stateful strategies carry from round to round (FedAvgM's momentum and its
# own last model, which under central DP is not the noisy global one; the server
# optimizers' moments): their attributes, read and written only where present.
SERVER_STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")
FEDAVGM_ARRAYS = "current_arrays"  # FedAvgM's is an ArrayRecord (FedOpt's is set each round)


def server_state(strategy: FedAvg) -> dict[str, Any]:
    """Return a copy of the strategy's state between rounds, as tensors a checkpoint holds."""
    import torch

    def tensors(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: torch.from_numpy(np.array(array)) for key, array in value.items()}
        return [torch.from_numpy(np.array(array)) for array in value]

    state = {}
    for name in SERVER_STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if value is not None:
            state[name] = tensors(value)
    if isinstance(getattr(strategy, FEDAVGM_ARRAYS, None), ArrayRecord):
        state[FEDAVGM_ARRAYS] = getattr(strategy, FEDAVGM_ARRAYS).to_torch_state_dict()
    return state


def restore_server_state(strategy: FedAvg, state: dict[str, Any]) -> None:
    """Give the strategy the state `server_state` saved; a name it lacks is an error."""
    for name, value in state.items():
        if name == FEDAVGM_ARRAYS and isinstance(strategy, FedAvgM):
            setattr(strategy, name, ArrayRecord(value))
            continue
        if name not in SERVER_STATE_ATTRIBUTES or not hasattr(strategy, name):
            raise UserError(
                f"cannot resume: the checkpoint holds {name!r}, which this strategy "
                f"({type(strategy).__name__}) does not keep"
            )
        if isinstance(value, dict):
            setattr(strategy, name, {key: array.numpy() for key, array in value.items()})
        else:
            setattr(strategy, name, [array.numpy() for array in value])


def make_strategy(
    settings: StrategyConfig,
    num_train_nodes: int,
    node_of_partition: dict[int, int],
    seed: int,
    rounds_done: int = 0,
) -> PaperSampling:
    """Build the strategy `settings.name` names, sampling as the paper does."""
    flower_class = STRATEGIES[settings.name]
    strategy_class = type(f"Paper{flower_class.__name__}", (PaperSampling, flower_class), {})
    strategy_settings = {
        FLOWER_ARGUMENT.get(key, key): getattr(settings, key)
        for key in STRATEGY_SETTINGS[settings.name]
    }
    strategy = strategy_class(
        num_train_nodes, node_of_partition, seed, rounds_done, **strategy_settings
    )
    return cast(PaperSampling, strategy)


class SeededCentralDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP around a strategy, its noise drawn per round.

    Flower draws the noise from NumPy's global RNG; this wrapper seeds that RNG from
    (seed, round) before each aggregation, so a run with DP is reproducible and resumes as
    if never stopped, like one without.
    """

    def __init__(self, strategy: PaperSampling, settings: DifferentialPrivacyConfig) -> None:
        super().__init__(
            strategy, settings.noise_multiplier, settings.clipping_norm, strategy.num_train_nodes
        )
        self.sampling = strategy

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, aggregate with the wrapped strategy, add this round's noise."""
        run_round = server_round + self.sampling.rounds_done
        noise_seed = np.random.SeedSequence([self.sampling.seed, run_round, 1])
        np.random.seed(int(noise_seed.generate_state(1)[0]))
        return super().aggregate_train(server_round, replies)
