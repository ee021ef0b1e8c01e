"""A run's settings as the launchers give them, read into one checked `RunConfig`.

- the Hydra CLI composes `conf/` (whose base is `FLAT_DEFAULTS`) into a `DictConfig`:
  `from_hydra`;
- `flwr run` gives the apps `Context.run_config`, pyproject's `[tool.flwr.app.config]`
  (equal to `FLAT_DEFAULTS`, a test keeps it so) overridden by `--run-config`: `from_flower`.

Both are flat maps of dotted keys to scalars, so every value is spelled the same way under
both launchers: B=∞ is `batch_size=inf`, the paper's target `target_accuracy="paper"`, the
automatic GPU share `client_resources.num_gpus="auto"`.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedavg_mnist.config import (
    AUTO,
    DEVICES,
    FULL_BATCH,
    INITS,
    MODELS,
    PAPER_TARGET,
    PARTITIONS,
    PRECISIONS,
    STRATEGY_NAMES,
    TRACKERS,
    WANDB_MODES,
    ClientResources,
    DatasetConfig,
    DifferentialPrivacyConfig,
    ModelConfig,
    RunConfig,
    StrategyConfig,
)
from fedavg_mnist.errors import UserError

# Under `flwr run` the apps run where Flower's SuperLink was started: a relative
# `output_dir` or `dataset.root` lies under this folder, and `{run_id}` is Flower's run ID.
RUNS_HOME = Path("~/fedavg-mnist")
RUN_ID_FIELD = "{run_id}"


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


_SCHEMA_DEFAULTS = flatten(asdict(RunConfig()))
# Every setting and its default, as pyproject's `[tool.flwr.app.config]` holds them.
FLAT_DEFAULTS: dict[str, bool | int | float | str] = {
    key: _flat_value(key, value) for key, value in _SCHEMA_DEFAULTS.items()
}
# A default of None says nothing of the type; those three settings name theirs.
_TYPES = {key: type(value) for key, value in _SCHEMA_DEFAULTS.items()}
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
