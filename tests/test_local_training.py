"""CUDA-graph local training against eager training (needs a CUDA device: run on a GPU)."""

import pytest
import torch

from fedavg_mnist.local_training import GraphedEpoch, train_local, train_local_graphed
from fedavg_mnist.models import build_model, place_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _client(num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_examples, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (num_examples,), generator=generator)
    return images.cuda(), labels.cuda()


def _models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    eager = place_model(build_model(name), "cuda")
    graphed = place_model(build_model(name), "cuda")
    graphed.load_state_dict(eager.state_dict())
    return eager, graphed


def _assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@cuda
@pytest.mark.parametrize(
    ("model_name", "num_examples", "batch_size", "epochs"),
    [("cnn", 600, 10, 2), ("cnn", 600, None, 3), ("mlp", 605, 50, 2)],  # 605: a short last batch
)
def test_graphed_training_makes_the_same_updates_as_eager(
    model_name: str, num_examples: int, batch_size: int | None, epochs: int
) -> None:
    eager, graphed = _models(model_name)
    start = {key: value.clone() for key, value in eager.state_dict().items()}
    # Two clients in turn from the same global model: the second replays the first's graph
    # on its own data, with the weights loaded in place as the ClientApp does.
    for seed in (1, 2):
        images, labels = _client(num_examples, seed)
        eager.load_state_dict(start)
        graphed.load_state_dict(start)
        expected = train_local(
            eager, images, labels, epochs, batch_size, 0.05, torch.Generator().manual_seed(seed)
        )
        loss = train_local_graphed(
            graphed, images, labels, epochs, batch_size, 0.05, torch.Generator().manual_seed(seed)
        )
        assert loss == pytest.approx(expected, rel=1e-4)
        _assert_same_weights(eager, graphed)
    changed = any(not torch.equal(start[k], v) for k, v in graphed.state_dict().items())
    assert changed  # the replays trained the model


@cuda
def test_capture_leaves_the_loaded_weights_alone() -> None:
    _, graphed = _models("mlp")
    before = {key: value.clone() for key, value in graphed.state_dict().items()}
    images, _ = _client(100, 3)
    GraphedEpoch(graphed, images, 10, 0.1)  # captured: its warm-up epoch trained the model
    for key, value in graphed.state_dict().items():
        assert torch.equal(value, before[key]), key
