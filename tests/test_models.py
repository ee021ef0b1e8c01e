import pytest
import torch

from fedavg_mnist.errors import UserError
from fedavg_mnist.models import Cnn, Mlp, build_model, num_parameters


@pytest.mark.parametrize(("name", "cls", "count"), [("cnn", Cnn, 1_663_370), ("mlp", Mlp, 199_210)])
def test_parameter_counts_match_the_paper(name: str, cls: type, count: int) -> None:
    model = build_model(name)
    assert isinstance(model, cls)
    assert num_parameters(model) == count
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        build_model("resnet")
