"""Local training: E epochs of plain minibatch SGD, eager or replayed from a CUDA graph.

A B=10 step of the paper's small networks is a few dozen tiny kernels, so on a GPU a
client's time goes to launching them from Python, not to arithmetic. `train_local_graphed`
captures one epoch of steps as a CUDA graph once per process and replays it for every
epoch of every client with the same shapes: an epoch becomes one launch. Both functions
run the same `sgd_epoch` over the same permutations, so they make the same updates.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sgd_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    loss_sum: torch.Tensor,
    proximal: Callable[[], torch.Tensor] | None = None,
) -> None:
    """One epoch: SGD steps on the minibatches `order` cuts, adding each step's loss to `loss_sum`.

    Each step's gradients are fresh tensors (set to None first, not zeroed): the backward
    pass hands its buffers to them without a copy; under capture they come from the
    graph's own memory, the same addresses on every replay. `proximal`, if given, is a term
    added to each step's objective (FedProx's); `loss_sum` keeps the data's loss alone.
    """
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images.index_select(0, batch)), labels.index_select(0, batch))
        (loss if proximal is None else loss + proximal()).backward()
        optimizer.step()
        loss_sum += loss.detach()


def proximal_term(model: nn.Module, mu: float) -> Callable[[], torch.Tensor]:
    """Return FedProx's term μ/2·‖w − w_global‖², w_global the model's weights now."""
    anchors = [(weight, weight.detach().clone()) for weight in model.parameters()]

    def term() -> torch.Tensor:
        squared = [(weight - anchor).pow(2).sum() for weight, anchor in anchors]
        return torch.stack(squared).sum() * (mu / 2)

    return term


def steps_per_epoch(num_examples: int, batch_size: int | None) -> tuple[int, int]:
    """Return (minibatch size, steps per epoch); B=None is the whole local set."""
    step = num_examples if batch_size is None else min(batch_size, num_examples)
    return step, math.ceil(num_examples / step)


def train_local(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int | None,
    lr: float,
    generator: torch.Generator | None = None,
    proximal_mu: float = 0.0,
    epoch_losses: list[float] | None = None,
) -> float:
    """Run `epochs` (E) of SGD with minibatch `batch_size` (B; None = all) at rate `lr`.

    The local data is reshuffled each epoch with `generator`; returns the mean
    minibatch loss over all local steps, and appends each epoch's to `epoch_losses` if
    given. With `proximal_mu` > 0 (FedProx) each step's objective adds
    μ/2·‖w − w_global‖², w_global being the weights the client received.
    """
    step, num_steps = steps_per_epoch(len(labels), batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss_sum = torch.zeros((), device=images.device)
    proximal = proximal_term(model, proximal_mu) if proximal_mu > 0 else None
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(images.device)
        before = float(loss_sum) if epoch_losses is not None else 0.0
        sgd_epoch(model, optimizer, images, labels, order, step, loss_sum, proximal)
        if epoch_losses is not None:
            epoch_losses.append((float(loss_sum) - before) / num_steps)
    return float(loss_sum) / (epochs * num_steps)


class GraphedEpoch:
    """One epoch of `sgd_epoch` captured as a CUDA graph over static input tensors.

    Each replay trains `model` in place on whatever `images`, `labels` and `order` hold.
    """

    def __init__(
        self, model: nn.Module, images: torch.Tensor, batch_size: int | None, lr: float
    ) -> None:
        self.model = model
        self.images = torch.zeros_like(images)
        self.labels = torch.zeros(len(images), dtype=torch.int64, device=images.device)
        self.order = torch.arange(len(images), device=images.device)
        self.loss_sum = torch.zeros((), device=images.device)
        self.step, self.num_steps = steps_per_epoch(len(images), batch_size)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.graph = torch.cuda.CUDAGraph()
        self._capture()

    def _epoch(self) -> None:
        sgd_epoch(
            self.model, self.optimizer, self.images, self.labels, self.order, self.step,
            self.loss_sum,
        )  # fmt: skip

    def _capture(self) -> None:
        saved = [tensor.detach().clone() for tensor in self.model.state_dict().values()]
        self.model.train()
        # Warm up on a side stream before capturing (PyTorch's CUDA graph notes): this
        # creates the gradients and the libraries' workspaces the graph will use.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._epoch()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            self._epoch()
        with torch.no_grad():  # the warm-up trained the model: give it back its weights
            for tensor, value in zip(self.model.state_dict().values(), saved, strict=True):
                tensor.copy_(value)

    def train(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        epochs: int,
        generator: torch.Generator | None,
    ) -> float:
        """Train on (`images`, `labels`) for `epochs`, as `train_local` would; return its loss."""
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.loss_sum.zero_()
        self.model.train()
        for _ in range(epochs):
            self.order.copy_(torch.randperm(len(labels), generator=generator))
            self.graph.replay()
        return float(self.loss_sum) / (epochs * self.num_steps)


GraphKey = tuple[int, tuple[int, ...], torch.dtype, int | None, float, bool]
_graphs: dict[GraphKey, GraphedEpoch] = {}
MAX_GRAPHS = 4  # one per (model, local data shape, B, η) a process meets; a run has one or two


def train_local_graphed(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int | None,
    lr: float,
    generator: torch.Generator | None = None,
) -> float:
    """`train_local` on a CUDA device, each epoch replayed from a graph captured on first use.

    The graph belongs to `model` (the same object every call: its weights are loaded in
    place), the local data's shape, B, η and whether autocast is on.
    """
    key = (
        id(model),
        tuple(images.shape),
        images.dtype,
        batch_size,
        lr,
        torch.is_autocast_enabled(images.device.type),
    )
    if key not in _graphs:
        if len(_graphs) >= MAX_GRAPHS:
            _graphs.pop(next(iter(_graphs)))
        _graphs[key] = GraphedEpoch(model, images, batch_size, lr)
    return _graphs[key].train(images, labels, epochs, generator)


Trainer = Callable[..., float]  # `train_local`'s signature, which both trainers share


def local_trainer(device: torch.device, cuda_graphs: bool, proximal_mu: float = 0.0) -> Trainer:
    """Return the trainer for data on `device`: graphed on CUDA when `cuda_graphs`.

    The graphed epoch has no proximal term: FedProx's clients (`proximal_mu` > 0) train
    eagerly.
    """
    graphed = cuda_graphs and device.type == "cuda" and proximal_mu == 0
    return train_local_graphed if graphed else train_local
