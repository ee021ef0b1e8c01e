"""Flower's strategies by config, on the paper's protocol: paired, checked, recorded."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import strategy as flower_strategies
from test_server_app import InProcessGrid

from fedavg_mnist.client_app import train
from fedavg_mnist.config import (
    STRATEGY_NAMES,
    STRATEGY_SETTINGS,
    DifferentialPrivacyConfig,
    RunConfig,
    StrategyConfig,
)
from fedavg_mnist.errors import UserError
from fedavg_mnist.local_training import train_local
from fedavg_mnist.models import build_model
from fedavg_mnist.privacy import RDP_ORDERS, epsilon, privacy_record
from fedavg_mnist.records import summary_line
from fedavg_mnist.run_dir import result_settings
from fedavg_mnist.server_app import prepare_run, run_server
from fedavg_mnist.settings import parse
from fedavg_mnist.strategy import FLOWER_ARGUMENT, STRATEGIES, make_strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")

SETTINGS = {  # a setting of each strategy, other than its default
    "fedavg": {},
    "fedprox": {"strategy.proximal_mu": 0.1},
    "fedavgm": {"strategy.server_momentum": 0.9},
    "fedadam": {"strategy.eta": 0.01},
    "fedyogi": {"strategy.eta": 0.01},
    "fedadagrad": {"strategy.eta": 0.01},
    "fedmedian": {},
    "fedtrimmedavg": {"strategy.trim_beta": 0.25},
}


@pytest.fixture
def base(synthetic_root: Path, tmp_path: Path) -> dict[str, object]:
    """The tiny 2NN run's settings (4 clients, 2 a round), for 3 rounds."""
    return {**TINY_SETTINGS, "num_rounds": 3, "dataset.root": str(synthetic_root)}


def test_the_registry_is_flowers_classes_with_the_settings_passed_on() -> None:
    assert sorted(STRATEGIES) == sorted(STRATEGY_NAMES) == sorted(SETTINGS)
    nodes = {p: 100 + p for p in range(4)}
    for name, settings in SETTINGS.items():
        config = parse({"strategy.name": name, **settings}).strategy
        strategy = make_strategy(config, 2, nodes, seed=0)
        flower_class = getattr(flower_strategies, STRATEGIES[name].__name__)
        assert isinstance(strategy, flower_class)  # Flower's arithmetic, not a copy
        for key in STRATEGY_SETTINGS[name]:
            assert getattr(strategy, FLOWER_ARGUMENT.get(key, key)) == getattr(config, key)


def test_every_strategy_trains_the_same_clients_each_round(base, tmp_path: Path) -> None:
    """Two strategies' runs with one seed are paired: same partitions, round by round; each
    run's results name its strategy and settings."""
    trained = {}
    for name, settings in SETTINGS.items():
        config = parse(
            {**base, **settings, "strategy.name": name, "output_dir": str(tmp_path / name)}
        )
        prepare_run(config)
        grid = InProcessGrid(config)
        run_server(grid, config)
        trained[name] = grid.trained
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["finished"] and results["config"]["strategy"]["name"] == name
        for key, value in settings.items():
            assert results["config"]["strategy"][key.split(".")[1]] == value
        assert all(np.isfinite(r["loss"]) for r in results["history"])
    assert len(trained["fedavg"]) == 3
    assert all(rounds == trained["fedavg"] for rounds in trained.values())


def test_fedavgm_without_momentum_is_fedavg_and_with_it_is_not(base, tmp_path: Path) -> None:
    histories = {}
    for label, momentum in (("fedavg", None), ("plain", 0.0), ("momentum", 0.9)):
        settings: dict[str, object] = {} if momentum is None else {"strategy.name": "fedavgm"}
        if momentum is not None:
            settings["strategy.server_momentum"] = momentum
        config = parse({**base, **settings, "output_dir": str(tmp_path / label)})
        prepare_run(config)
        run_server(InProcessGrid(config), config)
        document = json.loads((tmp_path / label / "results.json").read_text())
        histories[label] = [r["loss"] for r in document["history"]]
    assert histories["plain"] == pytest.approx(histories["fedavg"], rel=1e-5)
    assert histories["momentum"][2:] != pytest.approx(histories["fedavg"][2:], rel=1e-3)


def test_fedprox_without_the_term_is_fedavg_bit_for_bit(base, tmp_path: Path) -> None:
    """FedProx with μ=0 trains through its own path (μ sent in each round's config, the
    term added to the loss) and gives FedAvg's history exactly, on one seed."""
    histories = {}
    for label, settings in (
        ("fedavg", {}),
        ("fedprox", {"strategy.name": "fedprox", "strategy.proximal_mu": 0.0}),
    ):
        config = parse({**base, **settings, "output_dir": str(tmp_path / label)})
        prepare_run(config)
        run_server(InProcessGrid(config), config)
        document = json.loads((tmp_path / label / "results.json").read_text())
        assert document["config"]["strategy"]["name"] == label
        histories[label] = [(r["round"], r["accuracy"], r["loss"]) for r in document["history"]]
    assert len(histories["fedavg"]) == 4
    assert histories["fedprox"] == histories["fedavg"]


def test_fedprox_clients_add_the_proximal_term(base, tmp_path: Path) -> None:
    """μ/2·‖w − w_global‖² pulls the local model towards the global one; μ=0 is FedAvg."""
    torch.manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    start = build_model("mlp").state_dict()

    def distance(mu: float) -> float:
        model = build_model("mlp")
        model.load_state_dict(start)
        generator = torch.Generator().manual_seed(1)
        train_local(model, images, labels, 3, 8, 0.1, generator, proximal_mu=mu)
        return sum(float((model.state_dict()[k] - start[k]).norm() ** 2) for k in start)

    assert distance(1.0) < 0.8 * distance(0.0)

    # the ClientApp reads μ from the round's config, as Flower's FedProx puts it there
    config = parse({**base, "strategy.name": "fedprox", "strategy.proximal_mu": 1.0})
    config = replace(config, output_dir=str(tmp_path / "run"))
    prepare_run(config)
    strategy = make_strategy(config.strategy, 2, {p: 10 + p for p in range(4)}, seed=0)
    arrays = ArrayRecord(build_model("mlp").state_dict())
    (message, _) = strategy.configure_train(1, arrays, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    assert message.content["config"]["proximal-mu"] == 1.0
    replies = {}
    for mu in (0.0, 1.0):
        message.content.config_records["config"]["proximal-mu"] = mu
        partition = strategy.partition_of_node[message.metadata.dst_node_id]
        context = Context(
            1, 10 + partition, {"partition-id": partition, "num-partitions": 4}, RecordDict(), {}
        )
        request = Message(
            content=message.content, dst_node_id=10 + partition, message_type=MessageType.TRAIN
        )
        replies[mu] = train(request, context, config).content.array_records["arrays"]
    moved = {
        mu: sum(float(np.sum((replies[mu][k].numpy() - arrays[k].numpy()) ** 2)) for k in arrays)
        for mu in replies
    }
    assert moved[1.0] < moved[0.0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"strategy.name": "fedsgd"}, "strategy.name must be one of fedadagrad, fedadam, fedavg,"),
        ({"strategy.proximal_mu": -0.1}, "strategy.proximal_mu must be >= 0 (μ), got -0.1"),
        ({"strategy.server_momentum": 1.0}, "strategy.server_momentum must be in [0, 1), got 1.0"),
        ({"strategy.beta_1": 1.0}, "strategy.beta_1 must be in [0, 1)"),
        ({"strategy.tau": 0.0}, "strategy.tau must be > 0 (τ), got 0.0"),
        ({"strategy.trim_beta": 0.5}, "strategy.trim_beta must be in [0, 0.5) (β), got 0.5"),
        ({"strategy.eta": 0}, "strategy.eta must be > 0"),
    ],
)
def test_bad_strategy_settings_are_one_line_naming_the_key(setting, message) -> None:
    with pytest.raises(UserError) as raised:
        parse(setting)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_run_recorded_before_strategies_resumes_as_fedavg(base) -> None:
    recorded = parse(base).record()
    del recorded["strategy"]
    assert result_settings(recorded) == result_settings(parse(base).record())
    assert result_settings(recorded) != result_settings(
        parse({**base, "strategy.name": "fedprox"}).record()
    )


def test_default_strategy_is_the_papers_fedavg() -> None:
    assert RunConfig().strategy == StrategyConfig() and StrategyConfig().name == "fedavg"
    assert RunConfig().strategy_label == "fedavg"
    config = parse({"strategy.name": "fedprox", "strategy.proximal_mu": 0.1})
    assert config.strategy_label == "fedprox(proximal_mu=0.1)"


def _history(config: RunConfig) -> list[tuple[int, float, float]]:
    prepare_run(config)
    run_server(InProcessGrid(config), config)
    document = json.loads((Path(config.output_dir) / "results.json").read_text())
    return [(r["round"], r["accuracy"], r["loss"]) for r in document["history"]]


def test_central_dp_wraps_any_strategy_reproducibly_and_resumes(base, tmp_path: Path) -> None:
    """Flower's server-side fixed clipping: its noise drawn from (seed, round), so the same
    seed gives the same run, a resumed run the run never stopped; another seed, other noise."""
    dp = {"dp.enabled": True, "dp.noise_multiplier": 0.5, "dp.clipping_norm": 1.0}
    settings = {**base, **dp, "strategy.name": "fedavgm", "strategy.server_momentum": 0.5}
    first = _history(parse({**settings, "output_dir": str(tmp_path / "a")}))
    again = _history(parse({**settings, "output_dir": str(tmp_path / "b")}))
    plain = _history(parse({**base, "output_dir": str(tmp_path / "plain")}))
    assert first == again and first[0] == plain[0] and first[1:] != plain[1:]

    stopped = parse({**settings, "num_rounds": 1, "output_dir": str(tmp_path / "c")})
    _history(stopped)
    resumed = _history(replace(stopped, num_rounds=3, resume=True))
    assert resumed == first

    document = json.loads((tmp_path / "a" / "results.json").read_text())
    assert document["config"]["dp"] == {
        "enabled": True,
        "noise_multiplier": 0.5,
        "clipping_norm": 1.0,
        "delta": 1e-5,
    }
    # (ε, δ) after the rounds run, counted again when a resumed run goes on
    spent = document["privacy"]
    assert spent["rounds"] == 3 and spent["delta"] == 1e-5 and spent["sampling_rate"] == 0.5
    assert spent["epsilon"] == epsilon(0.5, 0.5, 3, 1e-5) > 0
    stopped_spent = json.loads((tmp_path / "c" / "results.json").read_text())["privacy"]
    assert stopped_spent == spent  # the resumed run's, after its 3 rounds
    assert "privacy" not in json.loads((tmp_path / "plain" / "results.json").read_text())
    line = summary_line(document, tmp_path / "a" / "results.json")
    assert f"(ε={spent['epsilon']:.3g}, δ=1e-05)-DP per client; results: " in line
    assert parse(settings).strategy_label == (
        "fedavgm(server_learning_rate=1.0, server_momentum=0.5)"
        "+dp(noise_multiplier=0.5, clipping_norm=1.0)"
    )
    with pytest.raises(UserError, match="dp.clipping_norm must be > 0, got 0"):
        parse({"dp.clipping_norm": 0})
    with pytest.raises(UserError, match=r"dp.delta must be in \(0, 1\), got 1.0"):
        parse({"dp.delta": 1.0})


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise() -> None:
    """Opacus's RDP accountant as `privacy.epsilon` calls it: more rounds or a larger
    sample spend more, more noise less, no round nothing; with every client sampled
    (q = 1) it is no worse than the Gaussian mechanism's classic RDP bound
    min over α of T·α/(2σ²) + log(1/δ)/(α − 1)."""
    base = epsilon(1.0, 0.1, 100, 1e-5)
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon(1.0, 0.1, 50, 1e-5) < base < epsilon(1.0, 0.1, 200, 1e-5)
    assert epsilon(2.0, 0.1, 100, 1e-5) < base < epsilon(1.0, 0.2, 100, 1e-5)
    assert epsilon(1.0, 0.1, 100, 1e-3) < base
    sigma, rounds, delta = 4.0, 10, 1e-5
    classic = min(rounds * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in RDP_ORDERS)
    assert 0.5 * classic < epsilon(sigma, 1.0, rounds, delta) <= classic
    no_noise = privacy_record(DifferentialPrivacyConfig(True, 0.0, 1.0), 10, 100, 5)
    assert no_noise["epsilon"] is None and no_noise["sampling_rate"] == 0.1


@pytest.mark.parametrize("settings", [SETTINGS["fedadam"] | {"strategy.name": "fedadam"}])
def test_a_server_optimizers_state_is_checkpointed(base, tmp_path: Path, settings) -> None:
    """FedAdam's moments survive a stop: the resumed run is the run never stopped."""
    full = _history(parse({**base, **settings, "output_dir": str(tmp_path / "full")}))
    stopped = parse({**base, **settings, "num_rounds": 1, "output_dir": str(tmp_path / "stop")})
    _history(stopped)
    assert _history(replace(stopped, num_rounds=3, resume=True)) == full
    checkpoint = torch.load(tmp_path / "stop" / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["server_state"]) == {"m_t", "v_t"}
