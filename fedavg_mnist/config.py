"""Structured config (the Hydra schema) and its flat `run_config` form for Flower."""

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context, UserConfig
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import UserError
from .paper import MODEL_NAMES, TARGET_ACCURACY

# The config's words, checked without importing torch, so bad input is told in a moment.
MODELS = tuple(sorted(MODEL_NAMES))
INITS = ("pytorch", "truncated_normal")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# `run_config` values cannot be None: these stand for null there (B=0 for B=∞, a GPU share
# of -1 for the automatic one, a target of 0 for the paper's); other nulls are left out.
FULL_BATCH = 0
AUTO_GPUS = -1.0
PAPER_TARGET = 0.0
RUN_CONFIG_NULLS: dict[str, int | float] = {
    "batch_size": FULL_BATCH,
    "client_resources.num_gpus": AUTO_GPUS,
    "target_accuracy": PAPER_TARGET,
}
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Under `flwr run` the apps run where Flower's SuperLink was started: a relative
# `output_dir` or `dataset.root` lies under this folder, and `{run_id}` is Flower's run ID.
RUNS_HOME = Path("~/fedavg-mnist")
RUN_ID_FIELD = "{run_id}"


@dataclass
class ModelConfig:
    """Which network, and its initial weights."""

    name: str = MISSING  # "cnn" or "mlp" (the paper's 2NN)
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
    lr: float = 0.1  # η, plain SGD (presets: the rate their lr_table names for the cell)
    lr_table: dict[str, float] = field(default_factory=dict)  # presets: η by `lr_key`
    num_rounds: int = 20
    stop_at_target: bool = False  # end the run at the first round reaching the target
    target_accuracy: float | None = None  # null: the paper's, 97% 2NN, 99% CNN
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "fp32"  # fp32, or bf16: autocast to bfloat16 (weights and SGD stay fp32)
    cuda_graphs: bool = True  # on CUDA, replay each local epoch from one captured CUDA graph
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


def target_accuracy(cfg: DictConfig) -> float:
    """Return the run's target: `target_accuracy`, else the paper's for its model."""
    if cfg.target_accuracy is not None:
        return float(cfg.target_accuracy)
    return TARGET_ACCURACY[cfg.model.name]


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
        (
            "target_accuracy",
            cfg.target_accuracy is None or 0.0 < cfg.target_accuracy <= 1.0,
            "in (0, 1], or null for the paper's",
        ),
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

    `run_config` holds no None: the nulls of `RUN_CONFIG_NULLS` become their stand-ins and
    other nulls are left out.
    """
    flat: UserConfig = {}
    for name, value in flatten(to_plain_dict(cfg)).items():
        if value is None:
            value = RUN_CONFIG_NULLS.get(name)
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


def group_options(group: str) -> list[str]:
    """Return the configs of one of the project's config groups (`conf/<group>/*.yaml`)."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def partition_config(name: str) -> dict[str, Any]:
    """Return `conf/partition/<name>.yaml`, its `${...}` left for the run's config to fill."""
    if name not in group_options("partition"):
        known = ", ".join(group_options("partition"))
        raise UserError(f"unknown partition {name!r}: choose one of {known}")
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "partition" / f"{name}.yaml"))
    assert isinstance(node, dict)
    return {str(key): value for key, value in node.items()}


def from_run_config(run_config: UserConfig) -> DictConfig:
    """Rebuild the typed config from Flower's `run_config` (the inverse of `to_run_config`).

    `partition` is either the partitioner's settings (`partition._target_`, ...) or, as
    pyproject gives it to `flwr run`, the name of a config in `conf/partition/`.
    """
    nested: dict[str, Any] = {}
    for key, value in run_config.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = None if key in RUN_CONFIG_NULLS and value == RUN_CONFIG_NULLS[key] else value
    if isinstance(nested.get("partition"), str):
        nested["partition"] = partition_config(nested["partition"])
    cfg = OmegaConf.merge(OmegaConf.structured(Config), nested)
    assert isinstance(cfg, DictConfig)
    return cfg


def to_plain_dict(cfg: DictConfig) -> dict[str, Any]:
    """Return the resolved config as JSON-ready nested dicts."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {str(key): value for key, value in plain.items()}


def absolute_path(path: str, run_id: int = 0) -> str:
    """Return `path` with `{run_id}` filled in and `~` expanded, relative to `RUNS_HOME`."""
    filled = Path(path.replace(RUN_ID_FIELD, str(run_id))).expanduser()
    if not filled.is_absolute():
        filled = RUNS_HOME.expanduser() / filled
    return str(filled.resolve())


@lru_cache(maxsize=4)
def _cached_config(
    items: tuple[tuple[str, bool | int | float | str], ...], run_id: int
) -> DictConfig:
    cfg = from_run_config(dict(items))
    cfg.output_dir = absolute_path(cfg.output_dir, run_id)
    cfg.dataset.root = absolute_path(cfg.dataset.root, run_id)
    return cfg


def run_settings(context: Context, fallback: UserConfig | None = None) -> DictConfig:
    """Return the run's typed config, parsed once per process, its paths made absolute.

    `Context.run_config` wins over `fallback`: `flwr run` fills it from pyproject's
    `[tool.flwr.app.config]` and `--run-config`; the Hydra CLI passes the resolved Hydra
    config as `fallback` (its paths are absolute already).
    """
    merged = {**(fallback or {}), **context.run_config}
    return _cached_config(tuple(sorted(merged.items())), context.run_id)
