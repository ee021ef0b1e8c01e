from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedavg_mnist.config import MODELS
from fedavg_mnist.errors import UserError
from fedavg_mnist.machine import cpu_flags
from fedavg_mnist.models import MODEL_CLASSES, Cnn, Mlp, bf16_is_slow, build_model, num_parameters


@pytest.mark.parametrize(("name", "cls", "count"), [("cnn", Cnn, 1_663_370), ("mlp", Mlp, 199_210)])
def test_parameter_counts_match_the_paper(name: str, cls: type, count: int) -> None:
    model = build_model(name)
    assert isinstance(model, cls)
    assert num_parameters(model) == count
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_the_config_accepts_exactly_the_models_there_are() -> None:
    assert sorted(MODEL_CLASSES) == list(MODELS)  # the config checks names without torch


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        build_model("resnet")


def test_truncated_normal_init_is_the_tensorflow_tutorials() -> None:
    model = build_model("mlp", "truncated_normal")
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    biases = torch.cat([m.bias for m in model.modules() if isinstance(m, nn.Linear)])
    assert weights.abs().max() <= 0.2 and 0.08 < weights.std() < 0.09  # N(0, 0.1) cut at 2σ
    assert torch.equal(biases, torch.full_like(biases, 0.1))
    default = build_model("mlp")
    assert default.state_dict()["layers.1.weight"].abs().max() <= 1 / 784**0.5
    with pytest.raises(UserError, match="unknown init 'xavier'"):
        build_model("mlp", "xavier")


@pytest.mark.parametrize(
    ("flags", "slow"),
    [("fpu sse avx2 avx512f", True), ("avx2 avx512f avx512_bf16", False), ("avx2 amx_bf16", False)],
)
def test_bf16_is_slow_only_on_cpus_without_bf16_units(
    tmp_path: Path, flags: str, slow: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_flags(cpuinfo) == set(flags.split())
    assert bf16_is_slow(torch.device("cpu"), cpuinfo) is slow
    assert bf16_is_slow(torch.device("cuda"), cpuinfo) is False


def test_unknown_cpu_flags_claim_nothing(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") is None
    assert bf16_is_slow(torch.device("cpu"), tmp_path / "absent") is False
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")  # no flags line (not x86)
    assert bf16_is_slow(torch.device("cpu"), tmp_path / "cpuinfo") is False


def test_cnn_is_conv_relu_pool_as_in_the_paper() -> None:
    torch.manual_seed(0)
    model = Cnn().eval()
    images = torch.randn(8, 1, 28, 28)
    weights = model.state_dict()
    hidden = images
    for layer in ("features.0", "features.3"):
        hidden = F.conv2d(hidden, weights[f"{layer}.weight"], weights[f"{layer}.bias"], padding=2)
        hidden = F.max_pool2d(F.relu(hidden), 2)
    hidden = F.relu(
        F.linear(hidden.flatten(1), weights["classifier.1.weight"], weights["classifier.1.bias"])
    )
    logits = F.linear(hidden, weights["classifier.3.weight"], weights["classifier.3.bias"])
    with torch.no_grad():
        assert torch.allclose(model(images), logits, atol=1e-6)
