"""Structured config (the Hydra schema) and its flat `run_config` form for Flower."""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from flwr.app import Context, UserConfig
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import UserError
from .models import INITS, MODEL_CLASSES

MODELS = tuple(MODEL_CLASSES)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# `run_config` values cannot be None: B=0 there stands for B=∞ (null in Hydra).
FULL_BATCH = 0


@dataclass
class ModelConfig:
    """Which network, its accuracy target and its default learning rate."""

    name: str = MISSING  # "cnn" or "mlp" (the paper's 2NN)
    target_accuracy: float = MISSING  # 0.99 CNN, 0.97 2NN
    lr: float = MISSING  # η used when `lr` is not overridden
    init: str = "pytorch"  # initial weights: pytorch (default), or truncated_normal (TF style)


@dataclass
class DatasetConfig:
    """Where the four MNIST IDX files live: `<root>/MNIST/raw/`."""

    root: str = "${oc.env:FEDAVG_MNIST_DATA,data}"
    download: bool = True  # fetch missing files from the public mirrors
    verify_checksums: bool = True  # SHA-256 of the standard files
    normalize: bool = True  # standardize pixels with MNIST's mean and std; false: [0, 1]


@dataclass
class ClientResources:
    """Resources Flower's Ray backend gives each simulated client."""

    num_cpus: int = 1  # also the number of torch threads per client
    num_gpus: float | None = None  # GPU fraction per client; None: 0.25 on CUDA, 0 on CPU


@dataclass
class Config:
    """The whole run; keys carry the paper's symbols in their comments."""

    model: ModelConfig = field(default_factory=ModelConfig)
    partition: Any = MISSING  # a flwr-datasets partitioner: `_target_` + its kwargs
    num_clients: int = 100  # K
    client_fraction: float = 0.1  # C; each round m = max(round(C*K), 1) clients
    local_epochs: int = 5  # E
    batch_size: int | None = 10  # B; null = the whole local dataset (B=∞)
    lr: float = "${model.lr}"  # type: ignore[assignment]  # η, plain SGD
    lr_table: dict[str, float] = field(default_factory=dict)  # presets: η by `lr_key`
    num_rounds: int = 20
    stop_at_target: bool = False  # end the run at the first round reaching the target
    target_accuracy: float = "${model.target_accuracy}"  # type: ignore[assignment]
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "fp32"  # fp32, or bf16: autocast to bfloat16 (weights and SGD stay fp32)
    eval_batch_size: int = 250  # per forward; CNN evaluation on CPU 1.6x faster than at 2000
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    client_resources: ClientResources = field(default_factory=ClientResources)
    output_dir: str = "${hydra:runtime.output_dir}"
    checkpoint_every: int = 10  # save model, history and RNG state every N rounds (0: never)
    resume: bool = False  # continue the run in `output_dir` after its last checkpoint
    fast_polling: bool = True  # wake Flower's simulation loops on messages, not every 100 ms
    verbose: bool = False  # show Flower's and Ray's logs


def register_schema() -> None:
    """Register the schema and the `tuned_lr` resolver so `conf/` can use them."""
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("tuned_lr"):
        OmegaConf.register_new_resolver("tuned_lr", tuned_lr)


def lr_key(
    partition: str, local_epochs: int, batch_size: int | None, client_fraction: float | None = None
) -> str:
    """Key of a preset's `lr_table`, e.g. `iid_E5_B10`, or `iid_C0p1_E1_B10` for C=0.1 only."""
    batch = "inf" if batch_size is None else str(batch_size)
    fraction = (
        "" if client_fraction is None else "_C" + str(float(client_fraction)).replace(".", "p")
    )
    return f"{partition}{fraction}_E{local_epochs}_B{batch}"


def tuned_lr(
    table: DictConfig,
    partition: str,
    client_fraction: float,
    local_epochs: int,
    batch_size: int | None,
    default: float,
) -> float:
    """η measured best for (partition, C, E, B), else for (partition, E, B), else `default`."""
    for key in (
        lr_key(partition, local_epochs, batch_size, client_fraction),
        lr_key(partition, local_epochs, batch_size),
    ):
        if key in table:
            return float(table[key])
    return float(default)


def num_sampled_clients(client_fraction: float, num_clients: int) -> int:
    """Return m, the clients trained per round: max(round(C*K), 1); C=0 means one."""
    return max(int(round(client_fraction * num_clients)), 1)


GPU_SHARE = 0.25  # default GPU fraction per simulated client: four clients share a GPU


def gpus_per_client(num_gpus: float | None, device: str) -> float:
    """GPU fraction Flower's Ray backend reserves per client: the setting, or automatic."""
    if num_gpus is not None:
        return float(num_gpus)
    return GPU_SHARE if device == "cuda" else 0.0


def validate(cfg: DictConfig) -> None:
    """Raise `UserError` naming the first setting outside its allowed range."""
    checks = [
        ("model.name", cfg.model.name in MODELS, f"one of {', '.join(MODELS)}"),
        ("model.init", cfg.model.init in INITS, f"one of {', '.join(INITS)}"),
        ("num_clients", cfg.num_clients >= 1, ">= 1 (K)"),
        ("client_fraction", 0.0 <= cfg.client_fraction <= 1.0, "in [0, 1] (C)"),
        ("local_epochs", cfg.local_epochs >= 1, ">= 1 (E)"),
        (
            "batch_size",
            cfg.batch_size is None or cfg.batch_size >= 1,
            ">= 1, or null for the full local dataset (B)",
        ),
        ("lr", cfg.lr > 0, "> 0"),
        ("num_rounds", cfg.num_rounds >= 1, ">= 1"),
        ("target_accuracy", 0.0 < cfg.target_accuracy <= 1.0, "in (0, 1]"),
        ("device", cfg.device in DEVICES, f"one of {', '.join(DEVICES)}"),
        ("precision", cfg.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, ">= 1"),
        ("checkpoint_every", cfg.checkpoint_every >= 0, ">= 0 (0: never)"),
        ("client_resources.num_cpus", cfg.client_resources.num_cpus >= 1, ">= 1"),
        (
            "client_resources.num_gpus",
            cfg.client_resources.num_gpus is None or cfg.client_resources.num_gpus >= 0,
            ">= 0, or null for automatic",
        ),
    ]
    for key, ok, allowed in checks:
        if not ok:
            got = OmegaConf.select(cfg, key)
            raise UserError(f"invalid config: {key} must be {allowed}, got {got}")
    if not (isinstance(cfg.partition, DictConfig) and "_target_" in cfg.partition):
        raise UserError("invalid config: partition needs a _target_ partitioner class")


def to_run_config(cfg: DictConfig) -> UserConfig:
    """Flatten a resolved config into Flower's `run_config` (dotted keys, scalars).

    `run_config` holds no None: B=null becomes `FULL_BATCH` and other nulls are left out.
    """
    nested = to_plain_dict(cfg)
    if nested["batch_size"] is None:
        nested["batch_size"] = FULL_BATCH
    flat: UserConfig = {}
    for name, value in flatten(nested).items():
        if value is None:
            continue  # absent: the schema's or the partitioner's default applies
        if not isinstance(value, bool | int | float | str):
            raise UserError(f"invalid config: {name} must be a number, bool or string")
        flat[name] = value
    return flat


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return a nested dict's leaves under dotted keys (`dataset.root`)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_run_config(run_config: UserConfig) -> DictConfig:
    """Rebuild the typed config from Flower's `run_config` (the inverse of `to_run_config`)."""
    nested: dict[str, Any] = {}
    for key, value in run_config.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    if nested.get("batch_size") == FULL_BATCH:
        nested["batch_size"] = None
    cfg = OmegaConf.merge(OmegaConf.structured(Config), nested)
    assert isinstance(cfg, DictConfig)
    return cfg


def to_plain_dict(cfg: DictConfig) -> dict[str, Any]:
    """Return the resolved config as JSON-ready nested dicts."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {str(key): value for key, value in plain.items()}


@lru_cache(maxsize=4)
def _cached_config(items: tuple[tuple[str, bool | int | float | str], ...]) -> DictConfig:
    return from_run_config(dict(items))


def run_settings(context: Context, fallback: UserConfig | None = None) -> DictConfig:
    """Return the typed config: `Context.run_config` over `fallback`, parsed once per process.

    `flwr run` fills `Context.run_config` from pyproject's `[tool.flwr.app.config]`; the
    deprecated `run_simulation` passes none, so `main` binds the Hydra config as `fallback`.
    """
    merged = {**(fallback or {}), **context.run_config}
    return _cached_config(tuple(sorted(merged.items())))
