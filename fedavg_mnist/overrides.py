"""The command line's Hydra overrides, checked before Hydra runs them.

Hydra parses the overrides (its whole grammar: `choice`, `range`, `glob`, quoting, ...);
every value a sweep takes is composed and validated once here, so a bad one ends in one
line naming it before any point runs, instead of Hydra's multi-line report or a sweep that
fails half way.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from .config import CONF_DIR, group_options, register_schema, validate
from .errors import UserError
from .run_dir import check_writable_location, prepare_output_dir

CONFIG_GROUPS = ("model", "partition", "experiment", "lr_grid")
OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "output_dir")


class _GroupLister:
    """What Hydra's override parser asks of a config loader to expand `glob(...)`."""

    def get_group_options(self, group_name: str, results_filter: Any = None) -> list[str]:
        return group_options(group_name)


def parse(argv: Sequence[str]) -> list[Override]:
    """Parse the overrides among `argv` with Hydra's grammar; one line if one is malformed."""
    arguments = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    parser = OverridesParser.create(config_loader=cast(ConfigLoader, _GroupLister()))
    try:
        return parser.parse_overrides(arguments)
    except Exception as err:  # Hydra's OverrideParseException and friends
        reason = str(err).strip().splitlines()[0]
        raise UserError(f"invalid override: {reason}") from err


def values(override: Override) -> list[str]:
    """Return the values an override takes, as override strings (`key=value`), sweeps expanded."""
    key = override.get_key_element()
    if override.is_discrete_sweep():
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    if override.is_sweep_override():  # an interval: a sweeper such as Optuna samples it
        return []
    return [f"{key}={override.get_value_element_as_str()}"]


def check_group_choices(overrides: Sequence[Override]) -> None:
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


def sweep_variants(overrides: Sequence[Override]) -> Iterator[list[str]]:
    """Yield the sweep's first point, then each other value of each swept key tried alone."""
    choices = [options for options in map(values, overrides) if options]
    base = [options[0] for options in choices]
    yield base
    for index, options in enumerate(choices):
        for option in options[1:]:
            yield base[:index] + [option] + base[index + 1 :]


def check_overrides(argv: Sequence[str]) -> None:
    """Compose and validate the config of every value given, so a bad one is one line."""
    register_schema()
    overrides = parse(argv)
    check_group_choices(overrides)
    output_dirs = [
        Path(str(o.value())) for o in overrides if o.key_or_group in OUTPUT_KEYS and o.value()
    ]
    resume = any(o.key_or_group == "resume" and o.value() is True for o in overrides)
    for output_dir in output_dirs:
        prepare_output_dir(output_dir, resume)
    if not output_dirs:  # Hydra's default run directory lies under the working directory
        check_writable_location(Path.cwd())
    settings = [o for o in overrides if not o.is_hydra_override() and o.key_or_group != "resume"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for variant in sweep_variants(settings):
            try:
                cfg = compose(
                    "config", overrides=[*variant, "output_dir=."], return_hydra_config=True
                )
                HydraConfig.instance().set_config(cfg)  # for `${hydra:runtime.choices...}`
                validate(cfg)
            except UserError:
                raise
            except Exception as err:  # Hydra's and OmegaConf's many config errors
                causes = [err, err.__cause__] if err.__cause__ else [err]
                reason = "; ".join(str(e).strip().splitlines()[0] for e in causes)
                raise UserError(f"invalid override: {reason}") from err
