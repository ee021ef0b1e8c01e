"""The Flower `ClientApp`: a client trains the global model on its partition and replies.

Its two handlers are plain functions of (message, context, config): `train` runs E epochs of
local SGD (`local_training`) and `identify` tells the server which partition the node holds.
"""

import sys
import time
from functools import lru_cache
from typing import Any, cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from fedavg_mnist.config import RunConfig
from fedavg_mnist.local_training import local_trainer, train_local
from fedavg_mnist.mnist import load_training_set
from fedavg_mnist.models import autocast, build_model, place_model, resolve_device
from fedavg_mnist.partitions import run_partitions
from fedavg_mnist.settings import from_flower

PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
NUM_CPUS_KEY, NUM_GPUS_KEY, RAY_NODE_KEY = "num-cpus", "num-gpus", "ray-node"
PROXIMAL_MU_KEY = "proximal-mu"  # what Flower's FedProx puts in each round's config
FIRST_EPOCH_LOSS_KEY, LAST_EPOCH_LOSS_KEY = "train-loss-first-epoch", "train-loss-last-epoch"


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed for one client's shuffling in one round, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def partition_data(config: RunConfig, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a client's images and labels on the run's device, made for this update.

    Made from the memory-mapped training set each time, not kept: a process keeps no copy
    of the partitions it has trained, and no copy of MNIST.
    """
    examples = load_training_set(config.dataset).examples(run_partitions(config)[partition_id])
    device = resolve_device(config.device)
    images, labels = examples
    return images.to(device), labels.to(device)


@lru_cache(maxsize=2)
def _model(name: str, device: str) -> nn.Module:
    """One model object per process, its weights replaced by each message."""
    return place_model(build_model(name), device)


def reported_partition_id(content: RecordDict) -> int:
    """Return the partition ID a client put in its reply."""
    return cast(int, content.config_records["client"][PARTITION_ID_KEY])


def ray_placement() -> dict[str, float | str] | None:
    """Where Ray runs this process (a simulated client): its node, CPUs and GPU share."""
    ray = sys.modules.get("ray")  # imported only where Flower's Ray backend runs
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    resources = context.get_assigned_resources()
    return {
        NUM_CPUS_KEY: float(resources.get("CPU", 0.0)),
        NUM_GPUS_KEY: float(resources.get("GPU", 0.0)),
        RAY_NODE_KEY: str(context.get_node_id()),
    }


def num_threads(cfg: RunConfig) -> int:
    """Torch threads for local training: the CPUs Ray reserved, else `client_resources`."""
    placement = ray_placement()
    cpus = placement[NUM_CPUS_KEY] if placement else cfg.client_resources.num_cpus
    return max(int(cpus), 1)


def train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Train the received global model on this node's partition and reply with it."""
    partition_id = int(context.node_config[PARTITION_ID_KEY])
    round_config = msg.content.config_records["config"]
    server_round = cast(int, round_config["server-round"])
    proximal_mu = float(cast(float, round_config.get(PROXIMAL_MU_KEY, 0.0)))
    torch.set_num_threads(num_threads(cfg))
    images, labels = partition_data(cfg, partition_id)
    model = _model(cfg.model.name, str(images.device))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    generator = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, partition_id))
    trainer = local_trainer(images.device, cfg.cuda_graphs, proximal_mu)
    extra: dict[str, Any] = {"proximal_mu": proximal_mu} if proximal_mu > 0 else {}
    epoch_losses: list[float] = []
    if trainer is train_local:  # a graphed epoch keeps only the sum over all epochs
        extra["epoch_losses"] = epoch_losses
    started = time.perf_counter()
    with autocast(cfg.precision, images.device):
        loss = trainer(
            model, images, labels, cfg.local_epochs, cfg.batch_size, cfg.lr, generator, **extra
        )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "train-loss": loss,
        "num-examples": len(labels),
    }
    metrics["train-seconds"] = time.perf_counter() - started
    if epoch_losses:
        metrics[FIRST_EPOCH_LOSS_KEY] = epoch_losses[0]
        metrics[LAST_EPOCH_LOSS_KEY] = epoch_losses[-1]
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(metrics),
            "client": ConfigRecord({PARTITION_ID_KEY: partition_id, **(ray_placement() or {})}),
        }
    )
    return Message(content=content, reply_to=msg)


def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, of how many, and its resources."""
    node = {
        key: int(context.node_config.get(key, -1)) for key in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY)
    }
    content = RecordDict({"client": ConfigRecord({**node, **(ray_placement() or {})})})
    return Message(content=content, reply_to=msg)


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """Build the `ClientApp`: it runs `config` (the Hydra CLI's), else `Context.run_config`."""
    app = ClientApp()

    def run_config(context: Context) -> RunConfig:
        return config if config is not None else from_flower(context.run_config, context.run_id)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, run_config(context))

    app.query()(identify)

    return app


app = make_client_app()
