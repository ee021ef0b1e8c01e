"""The paper's two MNIST networks: the 2NN (MLP) and the CNN."""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from fedavg_mnist.config import INITS
from fedavg_mnist.errors import UserError
from fedavg_mnist.machine import CPUINFO, cpu_flags


class Mlp(nn.Module):
    """2NN: 784-200-200-10 with ReLU (199,210 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits; the softmax lives in the cross-entropy loss."""
        return self.layers(x)


class Cnn(nn.Module):
    """CNN: 5x5 conv 32, 2x2 pool, 5x5 conv 64, 2x2 pool, FC 512 ReLU, 10 (1,663,370 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        # ReLU after max-pooling: the same function as before it (both are monotone), on a
        # quarter of the activations (CNN evaluation 1.1-1.3x faster on CPU).
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits; the softmax lives in the cross-entropy loss."""
        return self.classifier(self.features(x))


MODEL_CLASSES: dict[str, type[nn.Module]] = {"cnn": Cnn, "mlp": Mlp}


def build_model(name: str, init: str = "pytorch") -> nn.Module:
    """Return a freshly initialized model by config name (`cnn` or `mlp`).

    `init`: PyTorch's default (uniform, scaled by fan-in), or `truncated_normal`, the
    TensorFlow MNIST tutorials' weights N(0, 0.1^2) cut at 2 std, biases 0.1.
    """
    if name not in MODEL_CLASSES:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(MODEL_CLASSES)}")
    model = MODEL_CLASSES[name]()
    if init == "truncated_normal":
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.1)
    elif init != "pytorch":
        raise UserError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
    return model


def num_parameters(model: nn.Module) -> int:
    """Count trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve_device(name: str) -> torch.device:
    """Map the config's `device` (auto, cpu, cuda) to a torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available: use device=auto or cpu")
    return torch.device(name)


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move `model` to `device` in channels-last layout (convolutions ~25% faster on CPU)."""
    model.to(device)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[object]:
    """Context for a client's training or an evaluation at `precision` (bf16: autocast).

    Its weight-cast cache is off: one context spans all of a client's SGD steps, and the
    cache would feed every forward the bf16 weights cast at the first one.
    """
    if precision == "bf16":
        device_type = torch.device(device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 units that make bf16 faster than fp32


def bf16_is_slow(device: torch.device, cpuinfo: Path = CPUINFO) -> bool:
    """Tell whether `device` is a CPU known to lack AVX512-BF16 and AMX (bf16 is slower there).

    The flags come from Linux's `/proc/cpuinfo` (torch only tells through private functions);
    where they are unknown, nothing is claimed.
    """
    if device.type != "cpu":
        return False
    flags = cpu_flags(cpuinfo)
    return flags is not None and not flags.intersection(BF16_CPU_FLAGS)
