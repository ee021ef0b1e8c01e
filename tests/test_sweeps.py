"""Sweeps in Hydra's whole grammar, checked in one line, run side by side when asked."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ParallelSweep, run_cli

from fedavg_mnist import main
from fedavg_mnist.errors import UserError
from fedavg_mnist.overrides import check_overrides, parse, values


@pytest.mark.parametrize(
    ("override", "expanded"),
    [
        ("partition=choice(iid,pathological)", ["partition=iid", "partition=pathological"]),
        ("lr=range(0.05,0.15,0.05)", ["lr=0.05", "lr=0.1"]),
        ("model=glob(*)", ["model=cnn", "model=mlp"]),
        ("model=glob(*,exclude=cnn)", ["model=mlp"]),
        ("local_epochs=1,5", ["local_epochs=1", "local_epochs=5"]),
        ("dataset.root='/data/my mnist'", ["dataset.root='/data/my mnist'"]),
    ],
)
def test_hydra_parses_the_sweep(override: str, expanded: list[str]) -> None:
    (parsed,) = parse([override])
    assert values(parsed) == expanded
    check_overrides(["-m", override, "output_dir=/tmp/unused"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=choice(0.1,-1)", "lr must be > 0"),
        ("partition=choice(iid,shards)", "partition must be one of iid, pathological"),
        ("local_epochs=range(0,3)", "local_epochs must be >= 1"),
        ("lr=range(0.05", "invalid override: no viable alternative at input 'range(0.05'"),
    ],
)
def test_a_bad_value_anywhere_in_a_sweep_is_one_line(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_overrides(["-m", override])


@pytest.mark.slow
def test_a_bad_sweep_value_ends_the_cli_before_any_point_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "model=mlp", "lr=choice(0.1,-1)", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["error: invalid config: lr must be > 0, got -1.0"]
    assert not list(sweep.glob("*/results.json"))


def test_a_parallel_launcher_splits_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an 8-CPU machine (a SLURM job's or a `taskset`'s CPUs): each point its share."""
    monkeypatch.setattr(main, "available_cpus", lambda: 8)
    assert [main.cpu_share(jobs) for jobs in (1, 2, 3, 8, 32)] == [8, 4, 2, 1, 1]
    assert main.cpu_share(-1) == 1  # joblib's n_jobs=-1: one point per CPU


def _interval(run_dir: Path) -> tuple[datetime, datetime]:
    document = json.loads((run_dir / "results.json").read_text())
    assert document["finished"] is True
    # From the run's start (its round 0 counts the seconds since the run began, Ray's start-up
    # included) to its last round: start-ups take seconds, the tiny rounds a fraction of one.
    first, last = document["history"][0], document["history"][-1]
    started = first["time"] - first["seconds"]
    return datetime.fromtimestamp(started, UTC), datetime.fromtimestamp(last["time"], UTC)


@pytest.mark.slow
def test_choice_sweep_runs_its_points_side_by_side_with_joblib(
    parallel_sweep: ParallelSweep,
) -> None:
    assert parallel_sweep.result.returncode == 0, parallel_sweep.result.stderr
    points = sorted(parallel_sweep.sweep_dir.glob("*/results.json"))
    seeds = {json.loads(p.read_text())["config"]["seed"] for p in points}
    assert seeds == {0, 1}
    (first_start, first_end), (second_start, second_end) = (_interval(p.parent) for p in points)
    assert max(first_start, second_start) < min(first_end, second_end)  # they overlapped


def test_ray_system_config_is_passed_only_to_a_ray_that_takes_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from fedavg_mnist.ops.ray_setup import RAY_SYSTEM_CONFIG, ray_system_config

    assert ray_system_config() == {"_system_config": RAY_SYSTEM_CONFIG}  # Ray 2.55 takes it

    def init_without_it(address: str | None = None, **kwargs: object) -> None:
        """Start Ray (a Ray that documents no private arguments)."""

    monkeypatch.setattr(ray, "init", init_without_it)
    assert ray_system_config() == {}  # the fallback: Ray's own default
    assert "takes no _system_config" in capsys.readouterr().err
