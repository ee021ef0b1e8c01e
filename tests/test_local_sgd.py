import copy

import torch
import torch.nn.functional as F
from torch import nn

from fedavg_mnist.local_training import train_local
from fedavg_mnist.models import autocast


def _problem(num: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num, 1, 28, 28, generator=generator)
    labels = (images.flatten(1)[:, :10].argmax(dim=1)).long()
    return images, labels


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        return self.inner(x)


def test_full_batch_epoch_is_one_gradient_step() -> None:
    images, labels = _problem()
    model, reference = _model(), _model()
    train_local(model, images, labels, epochs=1, batch_size=None, lr=0.5)
    loss = F.cross_entropy(reference(images), labels)
    loss.backward()
    with torch.no_grad():
        for param in reference.parameters():
            assert param.grad is not None
            param.sub_(0.5 * param.grad)
    for trained, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(trained, expected)


def test_steps_per_round_are_e_times_n_over_b() -> None:
    images, labels = _problem(60)
    model = CountingModel()
    train_local(model, images, labels, epochs=3, batch_size=10, lr=0.1)
    assert model.batch_sizes == [10] * 18  # u = E * n / B
    model = CountingModel()
    train_local(model, images, labels, epochs=2, batch_size=25, lr=0.1)
    assert model.batch_sizes == [25, 25, 10] * 2


def test_local_training_lowers_the_loss_and_is_reproducible() -> None:
    images, labels = _problem()
    model = _model()
    before = F.cross_entropy(model(images), labels).item()
    first = copy.deepcopy(model)
    train_local(first, images, labels, 5, 10, 0.1, torch.Generator().manual_seed(1))
    after = F.cross_entropy(first(images), labels).item()
    assert after < 0.5 * before
    second = copy.deepcopy(model)
    train_local(second, images, labels, 5, 10, 0.1, torch.Generator().manual_seed(1))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    third = copy.deepcopy(model)
    train_local(third, images, labels, 5, 10, 0.1, torch.Generator().manual_seed(2))
    assert not torch.equal(next(first.parameters()), next(third.parameters()))


def test_bf16_autocast_trains_in_bfloat16_and_keeps_fp32_weights() -> None:
    images, labels = _problem()
    model, reference = _model(), _model()
    with autocast("bf16", "cpu"):
        assert model(images).dtype == torch.bfloat16
        train_local(model, images, labels, 1, 10, 0.1, torch.Generator().manual_seed(1))
    with autocast("fp32", "cpu"):
        assert model(images).dtype == torch.float32
    train_local(reference, images, labels, 1, 10, 0.1, torch.Generator().manual_seed(1))
    for trained, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert trained.dtype == torch.float32
        assert not torch.equal(trained, expected)
        torch.testing.assert_close(trained, expected, rtol=0.05, atol=0.05)


def test_bf16_forward_sees_each_sgd_step() -> None:
    # One autocast context spans all of a client's steps: every forward must use the
    # weights of the step before it, not a bf16 copy cast once when the context began.
    images, labels = _problem()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with autocast("bf16", "cpu"):
        before = model(images)
        F.cross_entropy(before, labels).backward()
        optimizer.step()
        after = model(images)
    assert not torch.equal(before, after)


def test_bf16_training_learns_as_fp32_does() -> None:
    images, labels = _problem(600)
    model, reference = _model(), _model()
    with autocast("bf16", "cpu"):
        first = train_local(model, images, labels, 1, 10, 0.1, torch.Generator().manual_seed(1))
        later = train_local(model, images, labels, 4, 10, 0.1, torch.Generator().manual_seed(2))
    train_local(reference, images, labels, 1, 10, 0.1, torch.Generator().manual_seed(1))
    expected = train_local(reference, images, labels, 4, 10, 0.1, torch.Generator().manual_seed(2))
    assert later < 0.5 * first
    assert abs(later - expected) < 0.1 * expected
