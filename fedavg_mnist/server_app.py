"""The `ServerApp`: the paper's FedAvg for `num_rounds`, the global model evaluated each round.

It reads its settings from the `RunConfig` the Hydra CLI gives it, or, under `flwr run` and
a deployment, from Flower's `Context.run_config`.
"""

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedavg_mnist.checkpoint import Checkpoint, Checkpointer, load_checkpoint
from fedavg_mnist.config import RunConfig, gpus_per_client
from fedavg_mnist.engine import adjusted_engine
from fedavg_mnist.errors import RunFailure
from fedavg_mnist.evaluation import EvaluationQueue, StateDict, TargetReached, evaluate
from fedavg_mnist.federation import discover_partitions
from fedavg_mnist.mnist import load_test_set
from fedavg_mnist.models import autocast, build_model, num_parameters, place_model, resolve_device
from fedavg_mnist.partitions import save_run_partitions
from fedavg_mnist.polling import EngineWakeups
from fedavg_mnist.records import RunRecorder, load_results, summary_line
from fedavg_mnist.run_dir import prepare_run_dir, release_run_dir
from fedavg_mnist.settings import from_flower
from fedavg_mnist.strategy import (
    SeededCentralDP,
    make_strategy,
    restore_server_state,
    server_state,
)
from fedavg_mnist.tracking import check_tracking, start_tracker


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG, which draws the initial model.

    Every later draw (sampling, shuffling, partitions) comes from a generator derived from
    the seed and the round, so no global RNG state needs saving in a checkpoint.
    """
    torch.manual_seed(seed)


def prepare_run(config: RunConfig) -> None:
    """Check the tracker and the run directory, create it, save the partitions: once per run."""
    check_tracking(config)
    prepare_run_dir(config)
    save_run_partitions(config)


def run_server(
    grid: Grid,
    cfg: RunConfig,
    wakeups: EngineWakeups | None = None,
    on_stop: list[Callable[[], object]] | None = None,
) -> None:
    """Run FedAvg for `num_rounds`, evaluating the global model on the test set each round.

    The global model and history are checkpointed after round 0 and every
    `checkpoint_every` rounds; with `resume`, the run continues after its last checkpoint.
    The run directory must have been prepared (`prepare_run`). `on_stop` receives what to
    call when the run is stopped early: it checkpoints the newest evaluated round.
    """
    print(f"results: {cfg.output_dir}", flush=True)
    if wakeups is not None:
        wakeups.wrap_grid(grid)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    output_dir = Path(cfg.output_dir)
    test_images, test_labels = (tensor.to(device) for tensor in load_test_set(cfg.dataset))
    model = build_model(cfg.model.name, cfg.model.init)
    previous = load_results(output_dir) if cfg.resume else None
    if cfg.resume:
        checkpoint = load_checkpoint(output_dir)
        rounds_done, initial_state = checkpoint.server_round, checkpoint.state_dict
        restored_server_state = checkpoint.server_state
        recorder = RunRecorder(cfg, num_parameters(model), checkpoint.history, previous)
    else:
        rounds_done, initial_state = 0, model.state_dict()
        restored_server_state = {}
        recorder = RunRecorder(cfg, num_parameters(model))
    initial_arrays = ArrayRecord(initial_state)
    place_model(model, device)
    checkpoints = Checkpointer(output_dir, cfg.checkpoint_every, recorder.save)
    if on_stop is not None:
        on_stop.append(checkpoints.stop)
    tracker = start_tracker(cfg, recorder.document, previous, rounds_done + 1 if cfg.resume else 0)

    def evaluate_round(server_round: int, states: tuple[StateDict, dict[str, Any], Any]) -> bool:
        """Evaluate, record and checkpoint one round; True if the run stops at it."""
        state, strategy_state, clients = states
        model.load_state_dict(state)
        started = time.perf_counter()
        with autocast(cfg.precision, device):
            loss, accuracy = evaluate(model, test_images, test_labels, cfg.eval_batch_size)
        recorder.record_round(server_round, accuracy, loss, time.perf_counter() - started, clients)
        tracker.log_round(recorder.history[-1])
        reached = cfg.stop_at_target and server_round > 0 and accuracy >= recorder.target
        due = reached or server_round in (0, cfg.num_rounds)
        checkpoint = Checkpoint(server_round, state, list(recorder.history), strategy_state)
        checkpoints.after_round(checkpoint, due)
        return reached

    evaluations = EvaluationQueue(evaluate_round)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += rounds_done
        if not (cfg.resume and server_round == rounds_done):  # else evaluated before the stop
            clients = sampling.client_records.pop(server_round, None)
            states = (arrays.to_torch_state_dict(), server_state(sampling), clients)
            evaluations.submit(server_round, states)
        return None

    gpus = gpus_per_client(cfg.client_resources.num_gpus, device.type)
    sampling = make_strategy(
        cfg.strategy,
        num_train_nodes=cfg.num_sampled_clients,
        node_of_partition=discover_partitions(grid, cfg, gpus),
        seed=cfg.seed,
        rounds_done=rounds_done,
    )
    restore_server_state(sampling, restored_server_state)
    strategy: Strategy = SeededCentralDP(sampling, cfg.dp) if cfg.dp.enabled else sampling
    try:
        with quiet_flower_rounds(cfg.verbose):
            strategy.start(
                grid=grid,
                initial_arrays=initial_arrays,
                num_rounds=cfg.num_rounds - rounds_done,
                evaluate_fn=evaluate_global,
            )
    except TargetReached:
        pass
    except BaseException:  # stopped (`flwr stop`, a signal) or failed: keep the newest round
        with suppress(Exception):  # the failure that stopped the run is the one to report
            evaluations.finish()
            checkpoints.stop()
        with suppress(Exception):
            tracker.close()
        raise
    evaluations.finish()
    tracker.close()
    recorder.document["ray_nodes"] = sorted(sampling.ray_nodes)
    recorder.finish()
    print(summary_line(recorder.document, recorder.path), flush=True)


@contextmanager
def quiet_flower_rounds(verbose: bool) -> Iterator[None]:
    """Keep Flower's per-round INFO lines out of the run's log unless `verbose`.

    Ours say each round once its evaluation is in; Flower's announce the next round, so
    under `flwr run` the two interleaved with round numbers one apart.
    """
    flower_logger = logging.getLogger("flwr")
    level = flower_logger.level
    if not verbose and flower_logger.getEffectiveLevel() < logging.WARNING:
        flower_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flower_logger.setLevel(level)


class OneLineFailures(logging.Filter):
    """Show a `RunFailure` that Flower logs with its traceback as one `error:` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of a `RunFailure`, keep its message."""
        failure = record.exc_info[1] if record.exc_info else None
        if isinstance(failure, RunFailure):
            record.msg, record.args = "error: %s", (failure,)
            record.exc_info = record.exc_text = None
        return True


def log_failures_in_one_line() -> None:
    """Have Flower log a `RunFailure` as its one line (it logs after the app has returned)."""
    flower_logger = logging.getLogger("flwr")
    if not any(isinstance(f, OneLineFailures) for f in flower_logger.filters):
        flower_logger.addFilter(OneLineFailures())


def call_on_flower_exit(actions: list[Callable[[], object]]) -> bool:
    """Have Flower's exit (SIGTERM, SIGINT) call `actions`; False where it cannot.

    Under `flwr run` and a deployment, Flower's process owns the signals: its handler runs
    the exit handlers registered with `flwr.supercore.exit.add_exit_handler`, then exits
    while the ServerApp's thread is mid-round. That function is Flower's internal API, so it
    is used only where it has the expected signature; elsewhere a signal loses the rounds
    since the last checkpoint, as a SIGKILL would.
    """
    try:
        from flwr.supercore.exit import add_exit_handler
    except ImportError:
        return False
    parameters = inspect.signature(add_exit_handler).parameters
    if list(parameters)[:1] != ["exit_handler"]:
        return False

    def run_actions() -> None:
        for action in list(actions):
            action()

    if "run_before_force_exit" in parameters:  # before Flower's force-exit timer starts
        add_exit_handler(run_actions, run_before_force_exit=True)
    else:
        add_exit_handler(run_actions)
    return True


def make_server_app(
    config: RunConfig | None = None,
    wakeups: EngineWakeups | None = None,
    on_stop: list[Callable[[], object]] | None = None,
) -> ServerApp:
    """Build the `ServerApp`.

    With `config` (the Hydra CLI, which has prepared the run directory and adjusted the
    engine, `wakeups` being its hand-over events, `on_stop` where to leave what to call if it
    stops the run early) the app runs that config; without, it
    reads Flower's `Context.run_config`, prepares the run itself and, when the simulation
    engine runs in its process (`flwr run`), adjusts the engine for the run. A `RunFailure`
    ends the run as failed (Flower's exit code and status) with its one line in the run's
    log; the Hydra CLI prints the same line.
    """
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        log_failures_in_one_line()
        if config is not None:
            run_server(grid, config, wakeups, on_stop)
            return
        run_config = from_flower(context.run_config, context.run_id)
        stop_actions: list[Callable[[], object]] = []
        call_on_flower_exit(stop_actions)
        with adjusted_engine(run_config) as engine_wakeups:
            prepare_run(run_config)
            try:
                run_server(grid, run_config, engine_wakeups, stop_actions)
            finally:
                stop_actions.clear()
                release_run_dir(Path(run_config.output_dir))

    return app


app = make_server_app()
