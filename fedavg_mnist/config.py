"""The run's settings: one typed, frozen `RunConfig`, read by both apps.

Every setting and its default live here; `settings.py` reads the launchers' flat maps of
dotted keys into a `RunConfig` and checks each value's type and range. The paper's words (K,
C, E, B, η, the 2NN and the targets) are defined here, once.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

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
