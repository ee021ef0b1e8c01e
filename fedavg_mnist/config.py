"""The run's settings: one typed, frozen `RunConfig`, read by both apps.

It is built from either launcher's settings, checked once, and then only read:

- the Hydra CLI composes `conf/` (whose base is `FLAT_DEFAULTS`) into a `DictConfig`:
  `from_hydra`;
- `flwr run` gives the apps `Context.run_config`, pyproject's `[tool.flwr.app.config]`
  (equal to `FLAT_DEFAULTS`, a test keeps it so) overridden by `--run-config`: `from_flower`.

Both are flat maps of dotted keys to scalars, so every value is spelled the same way under
both launchers: B=∞ is `batch_size=inf`, the paper's target `target_accuracy="paper"`, the
automatic GPU share `client_resources.num_gpus="auto"`. The paper's words (K, C, E, B, η,
the 2NN and the targets) are defined here, once.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedavg_mnist.errors import UserError

# The paper's networks (config name -> the paper's) and the test accuracy each must reach.
MODEL_NAMES = {"mlp": "2NN", "cnn": "CNN"}
TARGET_ACCURACY = {"mlp": 0.97, "cnn": 0.99}
MODELS = tuple(sorted(MODEL_NAMES))
# The partitions a run can name, and the settings each reads; the registry is
# `partitions.PARTITIONERS`. `pathological` is the paper's non-IID.
PARTITION_SETTINGS: dict[str, tuple[str, ...]] = {
    "iid": (),
    "pathological": (),
    "dirichlet": ("partition_alpha",),
    "classes": ("partition_classes",),
}
PARTITIONS = tuple(PARTITION_SETTINGS)
# Flower's strategies by name, and the settings (`StrategyConfig` fields) each one reads;
# the classes are `strategy.STRATEGIES`. FedAvg is the paper's.
STRATEGY_SETTINGS: dict[str, tuple[str, ...]] = {
    "fedadagrad": ("eta", "tau"),
    "fedadam": ("eta", "beta_1", "beta_2", "tau"),
    "fedavg": (),
    "fedavgm": ("server_learning_rate", "server_momentum"),
    "fedmedian": (),
    "fedprox": ("proximal_mu",),
    "fedtrimmedavg": ("trim_beta",),
    "fedyogi": ("eta", "beta_1", "beta_2", "tau"),
}
STRATEGY_NAMES = tuple(STRATEGY_SETTINGS)
# Trackers a run can log to besides its results (`tracking.py`), and W&B's modes.
TRACKERS = ("none", "tensorboard", "wandb")
WANDB_MODES = ("online", "offline")
INITS = ("pytorch", "truncated_normal")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
FULL_BATCH = "inf"  # B=∞: each client's whole local dataset in one step
PAPER_TARGET = "paper"  # the paper's target for the run's model
AUTO = "auto"  # the GPU share chosen for the device (`gpus_per_client`)
GPU_SHARE = 0.25  # automatic GPU fraction per simulated client on CUDA: four share a GPU

# Under `flwr run` the apps run where Flower's SuperLink was started: a relative
# `output_dir` or `dataset.root` lies under this folder, and `{run_id}` is Flower's run ID.
RUNS_HOME = Path("~/fedavg-mnist")
RUN_ID_FIELD = "{run_id}"


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and its initial weights."""

    name: str = "cnn"  # "cnn", or "mlp": the paper's 2NN
    init: str = "pytorch"  # pytorch (uniform ±1/√fan_in), or truncated_normal (TF style)


@dataclass(frozen=True)
class DatasetConfig:
    """Where the four MNIST IDX files live (`<root>/MNIST/raw/`), and how they are read."""

    root: str = "data"
    download: bool = True  # fetch missing files from the public mirrors
    verify_checksums: bool = True  # SHA-256 of the standard files
    normalize: bool = True  # standardize pixels with MNIST's mean and std; false: [0, 1]


@dataclass(frozen=True)
class ClientResources:
    """Resources Flower's Ray backend gives each simulated client."""

    num_cpus: int = 1  # also the number of torch threads per client
    num_gpus: float | None = None  # GPU fraction per client; None: automatic


@dataclass(frozen=True)
class StrategyConfig:
    """The server's strategy, one of Flower's, and the settings of those that have any.

    Defaults are Flower's (FedYogi's own default η is 0.01; here every server optimizer
    starts from 0.1 unless `eta` is set).
    """

    name: str = "fedavg"  # a name of `STRATEGY_NAMES`
    proximal_mu: float = 0.0  # fedprox: μ of the proximal term μ/2·‖w − w_global‖²
    server_learning_rate: float = 1.0  # fedavgm
    server_momentum: float = 0.0  # fedavgm
    eta: float = 0.1  # fedadam, fedyogi, fedadagrad: the server's learning rate
    beta_1: float = 0.9  # fedadam, fedyogi
    beta_2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: the adaptivity's floor
    trim_beta: float = 0.2  # fedtrimmedavg: the fraction cut from each end


@dataclass(frozen=True)
class DifferentialPrivacyConfig:
    """Central differential privacy as Flower offers it, around any strategy.

    The server clips each client's update to `clipping_norm` and adds Gaussian noise of std
    `noise_multiplier` x `clipping_norm` / m to their aggregate
    (`DifferentialPrivacyServerSideFixedClipping`).
    """

    enabled: bool = False
    noise_multiplier: float = 1.0
    clipping_norm: float = 10.0
    delta: float = 1e-5  # the δ at which results.json reports ε (`fedavg_mnist.privacy`)


@dataclass(frozen=True)
class RunConfig:
    """The whole run. None stands for ∞ in `batch_size`, for the paper's in `target_accuracy`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    dp: DifferentialPrivacyConfig = field(default_factory=DifferentialPrivacyConfig)
    partition: str = "iid"  # a name of `PARTITIONS`
    partition_alpha: float = 0.5  # dirichlet: α of each label's Dir(α) over the clients
    partition_classes: int = 2  # classes: how many labels each client holds
    num_clients: int = 100  # K
    client_fraction: float = 0.1  # C; each round m = max(round(C*K), 1) clients
    local_epochs: int = 5  # E
    batch_size: int | None = 10  # B; None: the whole local dataset (B=∞)
    lr: float = 0.1  # η, plain SGD
    num_rounds: int = 20
    stop_at_target: bool = False  # end the run at the first round reaching the target
    target_accuracy: float | None = None  # None: the paper's, 97% 2NN, 99% CNN
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "fp32"  # fp32, or bf16: autocast to bfloat16 (weights and SGD stay fp32)
    cuda_graphs: bool = True  # on CUDA, replay each local epoch from one captured CUDA graph
    eval_batch_size: int = 250  # per forward of the centralized evaluation
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    client_resources: ClientResources = field(default_factory=ClientResources)
    output_dir: str = "outputs/{run_id}"
    checkpoint_every: int = 10  # save model and history every N rounds (0: never)
    resume: bool = False  # continue the run in `output_dir` after its last checkpoint
    tracking: str = "none"  # none, tensorboard or wandb (the `tracking` extra)
    tracking_dir: str = ""  # where the tracker writes; empty: the run directory
    wandb_project: str = "fedavg-mnist"
    wandb_group: str = ""  # empty: a sweep point's sweep folder, none for a single run
    wandb_mode: str = "online"  # or offline: no network or key; `wandb sync` later
    fast_polling: bool = True  # wake Flower's simulation loops on messages, not every 100 ms
    verbose: bool = False  # show Flower's and Ray's logs

    @property
    def target(self) -> float:
        """The test accuracy rounds to target count to: the setting, else the paper's."""
        if self.target_accuracy is not None:
            return self.target_accuracy
        return TARGET_ACCURACY[self.model.name]

    @property
    def strategy_label(self) -> str:
        """The strategy and the settings it reads, e.g. `fedprox(proximal_mu=0.1)`."""
        return strategy_label(asdict(self.strategy), asdict(self.dp))

    @property
    def num_sampled_clients(self) -> int:
        """m, the clients trained each round."""
        return num_sampled_clients(self.client_fraction, self.num_clients)

    def record(self) -> dict[str, Any]:
        """Return the settings as `results.json` keeps them: nested, null for ∞, paper and auto."""
        return asdict(self)


# Settings that change a run's results: a run resumes only if they are as it recorded them.
RESULT_SETTINGS = (
    "model.name",
    "model.init",
    *(f"strategy.{name}" for name in StrategyConfig.__dataclass_fields__),
    *(f"dp.{name}" for name in DifferentialPrivacyConfig.__dataclass_fields__ if name != "delta"),
    "partition",
    "partition_alpha",
    "partition_classes",
    "num_clients",
    "client_fraction",
    "local_epochs",
    "batch_size",
    "lr",
    "seed",
    "precision",
    "eval_batch_size",
    "dataset.normalize",
)


def strategy_label(recorded: Mapping[str, Any] | None, dp: Mapping[str, Any] | None = None) -> str:
    """Name a recorded strategy with its settings, and central DP if it was on.

    None recorded: the paper's FedAvg.
    """
    recorded = recorded or {"name": "fedavg"}
    name = str(recorded.get("name", "fedavg"))
    settings = [f"{key}={recorded.get(key)!r}" for key in STRATEGY_SETTINGS.get(name, ())]
    label = f"{name}({', '.join(settings)})" if settings else name
    if dp and dp.get("enabled"):
        label += f"+dp(noise_multiplier={dp.get('noise_multiplier')!r}, "
        label += f"clipping_norm={dp.get('clipping_norm')!r})"
    return label


def partition_label(recorded: Mapping[str, Any], name: str) -> str:
    """Name a partition with the settings it reads, e.g. `dirichlet(partition_alpha=0.1)`."""
    settings = [f"{key}={recorded.get(key)!r}" for key in PARTITION_SETTINGS.get(name, ())]
    return f"{name}({', '.join(settings)})" if settings else name


def num_sampled_clients(client_fraction: float, num_clients: int) -> int:
    """Return m, the clients trained per round: max(round(C*K), 1); C=0 means one."""
    return max(int(round(client_fraction * num_clients)), 1)


def gpus_per_client(num_gpus: float | None, device: str) -> float:
    """GPU fraction Flower's Ray backend reserves per client: the setting, or automatic."""
    if num_gpus is not None:
        return float(num_gpus)
    return GPU_SHARE if device == "cuda" else 0.0


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return a nested mapping's leaves under dotted keys (`dataset.root`)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Return dotted keys as nested dicts (the inverse of `flatten`)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def _flat_value(key: str, value: Any) -> bool | int | float | str:
    """Return a setting as both launchers spell it (no None: ∞, paper and auto are words)."""
    if value is None:
        return {"batch_size": FULL_BATCH, "target_accuracy": PAPER_TARGET}.get(key, AUTO)
    assert isinstance(value, bool | int | float | str)
    return value


# Every setting and its default, as pyproject's `[tool.flwr.app.config]` holds them.
FLAT_DEFAULTS: dict[str, bool | int | float | str] = {
    key: _flat_value(key, value) for key, value in flatten(asdict(RunConfig())).items()
}
_TYPES = {key: type(value) for key, value in flatten(asdict(RunConfig())).items()}
_TYPES |= {"batch_size": int, "target_accuracy": float, "client_resources.num_gpus": float}


def _typed(key: str, value: Any) -> Any:
    """Check one setting's type (an int is a float; a bool is no number); return it typed."""
    if key == "batch_size" and (value is None or value == FULL_BATCH or value == math.inf):
        return None
    if key == "target_accuracy" and value in (None, PAPER_TARGET):
        return None
    if key == "client_resources.num_gpus" and value in (None, AUTO):
        return None
    kind = _TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    special = {"batch_size": f" or {FULL_BATCH}", "target_accuracy": f" or {PAPER_TARGET!r}"}
    special["client_resources.num_gpus"] = f" or {AUTO!r}"
    raise UserError(
        f"invalid config: {key} must be {words[kind]}{special.get(key, '')}, got {value!r}"
    )


def _strategy_checks(strategy: StrategyConfig) -> list[tuple[str, bool, str]]:
    return [
        ("strategy.name", strategy.name in STRATEGY_NAMES, f"one of {', '.join(STRATEGY_NAMES)}"),
        ("strategy.proximal_mu", strategy.proximal_mu >= 0, ">= 0 (μ)"),
        ("strategy.server_learning_rate", strategy.server_learning_rate > 0, "> 0"),
        ("strategy.server_momentum", 0 <= strategy.server_momentum < 1, "in [0, 1)"),
        ("strategy.eta", strategy.eta > 0, "> 0 (the server's η)"),
        ("strategy.beta_1", 0 <= strategy.beta_1 < 1, "in [0, 1)"),
        ("strategy.beta_2", 0 <= strategy.beta_2 < 1, "in [0, 1)"),
        ("strategy.tau", strategy.tau > 0, "> 0 (τ)"),
        ("strategy.trim_beta", 0 <= strategy.trim_beta < 0.5, "in [0, 0.5) (β)"),
    ]


def _checks(config: RunConfig) -> list[tuple[str, bool, str]]:
    resources = config.client_resources
    return [
        *_strategy_checks(config.strategy),
        ("dp.noise_multiplier", config.dp.noise_multiplier >= 0, ">= 0"),
        ("dp.clipping_norm", config.dp.clipping_norm > 0, "> 0"),
        ("dp.delta", 0 < config.dp.delta < 1, "in (0, 1)"),
        ("model.name", config.model.name in MODELS, f"one of {', '.join(MODELS)}"),
        ("model.init", config.model.init in INITS, f"one of {', '.join(INITS)}"),
        ("partition", config.partition in PARTITIONS, f"one of {', '.join(PARTITIONS)}"),
        ("partition_alpha", config.partition_alpha > 0, "> 0 (the Dirichlet's α)"),
        ("partition_classes", 1 <= config.partition_classes <= 10, "in 1..10 (labels per client)"),
        ("num_clients", config.num_clients >= 1, ">= 1 (K)"),
        ("client_fraction", 0.0 <= config.client_fraction <= 1.0, "in [0, 1] (C)"),
        ("local_epochs", config.local_epochs >= 1, ">= 1 (E)"),
        (
            "batch_size",
            config.batch_size is None or config.batch_size >= 1,
            f">= 1, or {FULL_BATCH} for the whole local dataset (B)",
        ),
        ("lr", config.lr > 0, "> 0"),
        ("num_rounds", config.num_rounds >= 1, ">= 1"),
        (
            "target_accuracy",
            config.target_accuracy is None or 0.0 < config.target_accuracy <= 1.0,
            f"in (0, 1], or {PAPER_TARGET!r} for the paper's",
        ),
        ("device", config.device in DEVICES, f"one of {', '.join(DEVICES)}"),
        ("precision", config.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("eval_batch_size", config.eval_batch_size >= 1, ">= 1"),
        ("tracking", config.tracking in TRACKERS, f"one of {', '.join(TRACKERS)}"),
        ("wandb_mode", config.wandb_mode in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}"),
        ("checkpoint_every", config.checkpoint_every >= 0, ">= 0 (0: never)"),
        ("client_resources.num_cpus", resources.num_cpus >= 1, ">= 1"),
        (
            "client_resources.num_gpus",
            resources.num_gpus is None or resources.num_gpus >= 0,
            f">= 0, or {AUTO!r}",
        ),
    ]


def parse(settings: Mapping[str, Any]) -> RunConfig:
    """Build the run's config from dotted settings over the defaults; check it once.

    Raises `UserError` naming the first unknown key, wrong type or value out of range.
    """
    unknown = sorted(set(settings) - set(FLAT_DEFAULTS))
    if unknown:
        raise UserError(f"invalid config: unknown setting {unknown[0]!r}")
    typed = {key: _typed(key, value) for key, value in {**FLAT_DEFAULTS, **settings}.items()}
    nested = unflatten(typed)
    config = RunConfig(
        **{
            **nested,
            "model": ModelConfig(**nested["model"]),
            "strategy": StrategyConfig(**nested["strategy"]),
            "dp": DifferentialPrivacyConfig(**nested["dp"]),
            "dataset": DatasetConfig(**nested["dataset"]),
            "client_resources": ClientResources(**nested["client_resources"]),
        }
    )
    for key, ok, allowed in _checks(config):
        if not ok:
            raise UserError(f"invalid config: {key} must be {allowed}, got {typed[key]}")
    return config


# Keys of Hydra's composed config that are Hydra's own means to an end, not settings.
HYDRA_ONLY_KEYS = ("lr_table",)


def from_hydra(composed: Mapping[str, Any]) -> RunConfig:
    """Return the run's config from Hydra's composed config (resolved to plain containers).

    Relative paths are made absolute against the working directory.
    """
    plain = {k: v for k, v in composed.items() if k not in (*HYDRA_ONLY_KEYS, "hydra")}
    config = parse(flatten(plain))
    return with_paths(config, lambda path: Path(path).expanduser().resolve())


def absolute_path(path: str, run_id: int = 0) -> str:
    """Return `path` with `{run_id}` filled in and `~` expanded, relative to `RUNS_HOME`."""
    filled = Path(path.replace(RUN_ID_FIELD, str(run_id))).expanduser()
    if not filled.is_absolute():
        filled = RUNS_HOME.expanduser() / filled
    return str(filled.resolve())


@lru_cache(maxsize=4)
def _from_flower(items: tuple[tuple[str, bool | int | float | str], ...], run_id: int) -> RunConfig:
    return with_paths(parse(dict(items)), lambda path: Path(absolute_path(path, run_id)))


def from_flower(run_config: Mapping[str, bool | int | float | str], run_id: int) -> RunConfig:
    """Return the run's config from Flower's `Context.run_config`, parsed once per process.

    Relative paths lie under `RUNS_HOME`, and `{run_id}` is Flower's run ID.
    """
    return _from_flower(tuple(sorted(run_config.items())), run_id)


def with_paths(config: RunConfig, resolve: Any) -> RunConfig:
    """Return `config` with its paths passed through `resolve` (`tracking_dir` if set)."""
    dataset = replace(config.dataset, root=str(resolve(config.dataset.root)))
    tracking_dir = str(resolve(config.tracking_dir)) if config.tracking_dir else ""
    return replace(
        config,
        output_dir=str(resolve(config.output_dir)),
        dataset=dataset,
        tracking_dir=tracking_dir,
    )
