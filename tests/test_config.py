import subprocess
import sys
import tomllib

import pytest
from conftest import PROJECT_ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedavg_mnist.config import (
    from_run_config,
    register_schema,
    target_accuracy,
    to_run_config,
    validate,
)
from fedavg_mnist.errors import UserError

register_schema()


def _compose(*overrides: str):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/x", *overrides])


def test_defaults_are_the_papers_headline_setting() -> None:
    cfg = _compose()
    assert (cfg.model.name, cfg.num_clients, cfg.client_fraction) == ("cnn", 100, 0.1)
    assert (cfg.local_epochs, cfg.batch_size, cfg.num_rounds) == (5, 10, 20)
    assert cfg.target_accuracy is None  # the paper's target for the model
    assert target_accuracy(cfg) == 0.99
    assert target_accuracy(_compose("model=mlp")) == 0.97
    assert target_accuracy(_compose("model=mlp", "target_accuracy=0.9")) == 0.9
    validate(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["partition=pathological", "batch_size=null"],
        ["batch_size=10", "client_resources.num_gpus=0.5", "target_accuracy=0.98"],
    ],
)
def test_run_config_round_trips(overrides: list[str]) -> None:
    cfg = _compose(*overrides)
    run_config = to_run_config(cfg)
    assert all(isinstance(v, bool | int | float | str) for v in run_config.values())
    back = from_run_config(run_config)
    expected = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(expected, dict)
    expected["partition"] = {k: v for k, v in expected["partition"].items() if v is not None}
    assert OmegaConf.to_container(back, resolve=True) == expected


def test_flwr_run_config_names_the_partition_and_derives_its_size() -> None:
    """`--run-config "partition='pathological' num_clients=50"` as Hydra's overrides."""
    back = from_run_config({"partition": "pathological", "num_clients": 50, "seed": 3})
    hydra = _compose("partition=pathological", "num_clients=50", "seed=3")
    assert OmegaConf.to_container(back.partition, resolve=True) == OmegaConf.to_container(
        hydra.partition, resolve=True
    )
    with pytest.raises(UserError, match="unknown partition 'dirichlet': choose one of iid"):
        from_run_config({"partition": "dirichlet"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("client_fraction=1.5", "client_fraction must be in \\[0, 1\\]"),
        ("local_epochs=0", "local_epochs must be >= 1"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("num_rounds=0", "num_rounds must be >= 1"),
        ("lr=0", "lr must be > 0"),
        ("device=tpu", "device must be one of"),
        ("model.init=xavier", "model.init must be one of pytorch, truncated_normal"),
        ("precision=fp16", "precision must be one of fp32, bf16"),
    ],
)
def test_validate_names_the_bad_setting(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate(_compose(override))


def test_pyproject_app_config_is_the_hydra_default() -> None:
    """`flwr run .` reads [tool.flwr.app.config]: the same run as Hydra's defaults."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    flat: dict = {}

    def flatten(node: dict, prefix: str = "") -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    flatten(pyproject["tool"]["flwr"]["app"]["config"])
    from_flwr = OmegaConf.to_container(from_run_config(flat), resolve=True)
    from_hydra = OmegaConf.to_container(
        _compose("dataset.root=data", "output_dir='outputs/{run_id}'"), resolve=True
    )
    assert from_flwr == from_hydra


def test_gpu_share_is_automatic_on_cuda_only() -> None:
    from fedavg_mnist.config import gpus_per_client

    assert gpus_per_client(None, "cuda") == 0.25  # four simulated clients share one GPU
    assert gpus_per_client(None, "cpu") == 0.0
    assert gpus_per_client(0.5, "cuda") == 0.5


def test_checking_input_and_reading_results_import_no_torch() -> None:
    """Bad input is told, and results reported, without the seconds torch takes to import."""
    code = (
        "import sys, fedavg_mnist.main, fedavg_mnist.report, fedavg_mnist.plot, "
        "fedavg_mnist.campaign; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr
