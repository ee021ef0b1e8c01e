import math
import subprocess
import sys
import tomllib
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from fedavg_mnist.config import RunConfig, gpus_per_client
from fedavg_mnist.errors import UserError
from fedavg_mnist.overrides import compose_run_config
from fedavg_mnist.settings import FLAT_DEFAULTS, flatten, from_flower, parse


def test_defaults_are_the_papers_headline_setting() -> None:
    config = compose_run_config([])
    assert (config.model.name, config.num_clients, config.client_fraction) == ("cnn", 100, 0.1)
    assert (config.local_epochs, config.batch_size, config.num_rounds) == (5, 10, 20)
    assert config.num_sampled_clients == 10  # m = max(round(C*K), 1)
    assert config.target_accuracy is None and config.target == 0.99  # the paper's, CNN
    assert compose_run_config(["model=mlp"]).target == 0.97
    assert compose_run_config(["model.name=mlp", "target_accuracy=0.9"]).target == 0.9


def test_the_config_is_frozen() -> None:
    config = parse({})
    with pytest.raises(FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("hydra_overrides", "flower_settings"),
    [
        (
            ["partition=pathological", "batch_size=inf"],
            {"partition": "pathological", "batch_size": math.inf},
        ),
        (["batch_size=null"], {"batch_size": math.inf}),  # Hydra's null: B=∞ too
        (
            ["client_resources.num_gpus=0.5", "target_accuracy=0.98", "model.name=mlp"],
            {"client_resources.num_gpus": 0.5, "target_accuracy": 0.98, "model.name": "mlp"},
        ),
    ],
)
def test_both_launchers_spell_a_setting_alike_and_build_the_same_config(
    hydra_overrides: list[str], flower_settings: dict
) -> None:
    """Hydra's overrides and `--run-config`'s settings, key for key, give one `RunConfig`."""
    paths = {"output_dir": "/tmp/fedavg-run", "dataset.root": "/tmp/mnist"}
    from_hydra = compose_run_config(
        [*hydra_overrides, "dataset.root=/tmp/mnist"], "/tmp/fedavg-run"
    )
    flower = from_flower({**flower_settings, **paths}, run_id=7)
    assert flower == from_hydra
    assert from_hydra != parse({})


def test_b_infinity_is_inf_under_both_launchers() -> None:
    """`batch_size=inf`: Hydra's override grammar and TOML (`--run-config`) both read a float."""
    assert compose_run_config(["batch_size=inf"]).batch_size is None
    assert tomllib.loads("batch_size = inf")["batch_size"] == math.inf
    assert parse({"batch_size": math.inf}).batch_size is None
    assert parse({"batch_size": "inf"}).batch_size is None  # as YAML reads it


def test_flower_paths_lie_under_the_runs_home_with_flowers_run_id() -> None:
    config = from_flower({"output_dir": "outputs/{run_id}", "dataset.root": "data"}, 42)
    assert config.output_dir.endswith("fedavg-mnist/outputs/42")
    assert config.dataset.root.endswith("fedavg-mnist/data")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"client_fraction": 1.5}, "client_fraction must be in \\[0, 1\\]"),
        ({"local_epochs": 0}, "local_epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1, or inf"),
        ({"num_rounds": 0}, "num_rounds must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"device": "tpu"}, "device must be one of"),
        ({"model.init": "xavier"}, "model.init must be one of pytorch, truncated_normal"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16"),
        ({"partition": "shards"}, "partition must be one of iid, pathological"),
        ({"num_rounds": "ten"}, "num_rounds must be an integer, got 'ten'"),
        ({"stop_at_target": 1}, "stop_at_target must be true or false"),
        ({"target_accuracy": "best"}, "target_accuracy must be a number or 'paper'"),
        ({"num_round": 5}, "unknown setting 'num_round'"),
    ],
)
def test_a_bad_setting_is_named_in_one_line(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        parse(settings)
    assert "\n" not in str(raised.value)


def test_pyproject_app_config_is_the_configs_defaults() -> None:
    """`flwr run .` reads [tool.flwr.app.config]: exactly `FLAT_DEFAULTS`, so they cannot drift."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert flatten(pyproject["tool"]["flwr"]["app"]["config"]) == FLAT_DEFAULTS


def test_hydras_defaults_are_the_configs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hydra CLI's composed defaults are `RunConfig()`, but for its own two paths."""
    monkeypatch.delenv("FEDAVG_MNIST_DATA", raising=False)
    composed = compose_run_config([])
    defaults = RunConfig()
    assert composed.dataset.root == str(Path.cwd() / "data")  # $FEDAVG_MNIST_DATA, else ./data
    dataset = replace(composed.dataset, root=defaults.dataset.root)
    assert replace(composed, output_dir=defaults.output_dir, dataset=dataset) == defaults


def test_gpu_share_is_automatic_on_cuda_only() -> None:
    assert gpus_per_client(None, "cuda") == 0.25  # four simulated clients share one GPU
    assert gpus_per_client(None, "cpu") == 0.0
    assert gpus_per_client(0.5, "cuda") == 0.5


def test_checking_input_and_reading_results_import_no_torch() -> None:
    """Bad input is told, and results reported, without the seconds torch takes to import."""
    code = (
        "import sys, fedavg_mnist.main, fedavg_mnist.analysis.report, fedavg_mnist.analysis.plot, "
        "fedavg_mnist.ops.campaign; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr
