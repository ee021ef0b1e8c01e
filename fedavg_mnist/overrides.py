"""The Hydra CLI's config: `conf/` over `RunConfig`'s defaults, its overrides checked first.

Hydra parses the overrides (its whole grammar: `choice`, `range`, `glob`, quoting, ...);
every value a sweep takes is composed into a `RunConfig` once here, so a bad one ends in
one line naming it before any point runs and before Hydra writes anything, instead of
Hydra's multi-line report or a sweep that fails half way.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from fedavg_mnist.config import RunConfig
from fedavg_mnist.errors import UserError
from fedavg_mnist.presets import tuned_lr
from fedavg_mnist.run_dir import check_output_dir
from fedavg_mnist.settings import FLAT_DEFAULTS, from_hydra, unflatten

CONF_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_GROUPS = ("model", "experiment", "lr_grid")
OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "output_dir")


def hydra_base() -> dict[str, Any]:
    """`FLAT_DEFAULTS` as the base of Hydra's config, with the CLI's own two paths."""
    base = unflatten(FLAT_DEFAULTS)
    base["output_dir"] = "${hydra:runtime.output_dir}"
    base["dataset"]["root"] = "${oc.env:FEDAVG_MNIST_DATA,data}"
    base["lr_table"] = {}  # a preset's η per cell, read by the `tuned_lr` resolver
    return base


def register_hydra_config() -> None:
    """Give Hydra the base config and the `tuned_lr` resolver that `conf/` uses."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="base_config", node=hydra_base())
    if not OmegaConf.has_resolver("tuned_lr"):
        OmegaConf.register_new_resolver("tuned_lr", tuned_lr)


def group_options(group: str) -> list[str]:
    """Return the configs of one of the CLI's config groups (`conf/<group>/*.yaml`)."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def to_run_config(composed: Any) -> RunConfig:
    """Return the `RunConfig` of a Hydra config composed (and resolved) by Hydra."""
    from omegaconf import OmegaConf

    settings = OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"])
    plain = OmegaConf.to_container(settings, resolve=True)
    assert isinstance(plain, dict)
    return from_hydra({str(key): value for key, value in plain.items()})


class _GroupLister:
    """What Hydra's override parser asks of a config loader to expand `glob(...)`."""

    def get_group_options(self, group_name: str, results_filter: Any = None) -> list[str]:
        return group_options(group_name)


def parse(argv: Sequence[str]) -> list[Any]:
    """Parse the overrides among `argv` with Hydra's grammar; one line if one is malformed."""
    from hydra.core.config_loader import ConfigLoader
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    parser = OverridesParser.create(config_loader=cast(ConfigLoader, _GroupLister()))
    try:
        return parser.parse_overrides(arguments)
    except Exception as err:  # Hydra's OverrideParseException and friends
        reason = str(err).strip().splitlines()[0]
        raise UserError(f"invalid override: {reason}") from err


def values(override: Any) -> list[str]:
    """Return the values an override takes, as override strings (`key=value`), sweeps expanded."""
    key = override.get_key_element()
    if override.is_discrete_sweep():
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    if override.is_sweep_override():  # an interval: a sweeper such as Optuna samples it
        return []
    return [f"{key}={override.get_value_element_as_str()}"]


def check_group_choices(overrides: Sequence[Any]) -> None:
    """Reject an unknown choice of a config group in one line."""
    for override in overrides:
        if override.key_or_group not in CONFIG_GROUPS:
            continue
        known = group_options(override.key_or_group)
        for choice in values(override):
            name = choice.partition("=")[2]
            if name not in known:
                raise UserError(
                    f"unknown {override.key_or_group} {name!r}: choose one of {', '.join(known)}"
                )


def sweep_variants(overrides: Sequence[Any]) -> Iterator[list[str]]:
    """Yield the sweep's first point, then each other value of each swept key tried alone."""
    choices = [options for options in map(values, overrides) if options]
    base = [options[0] for options in choices]
    yield base
    for index, options in enumerate(choices):
        for option in options[1:]:
            yield base[:index] + [option] + base[index + 1 :]


def compose_run_config(overrides: Sequence[str], output_dir: str = ".") -> RunConfig:
    """Compose `conf/` with `overrides` as the CLI does and return the checked `RunConfig`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_hydra_config()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose(
                "config",
                overrides=[*overrides, f"output_dir={output_dir}"],
                return_hydra_config=True,
            )
            HydraConfig.instance().set_config(cfg)  # for a `${hydra:...}` an override uses
            return to_run_config(cfg)
        except UserError:
            raise
        except Exception as err:  # Hydra's and OmegaConf's many config errors
            causes = [err, err.__cause__] if err.__cause__ else [err]
            reason = "; ".join(str(e).strip().splitlines()[0] for e in causes)
            raise UserError(f"invalid override: {reason}") from err


def check_overrides(argv: Sequence[str]) -> list[RunConfig]:
    """Compose and check the config of every value given; return them. Writes nothing.

    The output folders named on the command line are checked too (results in the way, or
    nothing to resume), so that Hydra does not write its `.hydra/` into a finished run.
    """
    overrides = parse(argv)
    check_group_choices(overrides)
    resume = any(o.key_or_group == "resume" and o.value() is True for o in overrides)
    for override in overrides:
        if override.key_or_group in OUTPUT_KEYS and override.value():
            check_output_dir(Path(str(override.value())), resume)
    if not any(o.key_or_group in OUTPUT_KEYS for o in overrides):
        check_output_dir(Path.cwd() / "outputs", resume=False)  # Hydra's default lies there
    settings = [o for o in overrides if not o.is_hydra_override() and o.key_or_group != "resume"]
    return [compose_run_config(variant) for variant in sweep_variants(settings)]


def named_run_dir(argv: Sequence[str]) -> Path | None:
    """Return the run directory a single run is given (`hydra.run.dir=`), or None."""
    if any(arg in ("-m", "--multirun") for arg in argv):
        return None
    named = [o for o in parse(argv) if o.key_or_group == "hydra.run.dir" and o.value()]
    return Path(str(named[-1].value())) if named else None
