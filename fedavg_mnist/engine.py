"""A run's adjustments to Flower's simulation engine when it runs in the run's process.

Under `flwr run` the `ServerApp` and the simulation engine are threads of one process
(`flwr-simulation`), and Flower starts the `ServerApp`'s thread before the engine. The
`ServerApp` therefore makes, as its first step and for its run only:

- the engine's Ray a Ray of the run's own: Flower's engine calls `ray.init()` with no
  address, which joins the newest Ray on the machine (another run's, which it would then
  share and starve); Ray's own `RAY_ADDRESS=local` starts a new one instead. A user's
  `RAY_ADDRESS` (a cluster) is left as it is; the process is the run's, so it stays set;
- the engine's hand-over loops event-driven (`polling.engine_wakeups`), if `fast_polling`.

The Hydra CLI does the same around `run_simulation` by its own means (`ray.init`'s
arguments, `engine_wakeups`). The engine's loops are put back when the run ends.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from fedavg_mnist.config import RunConfig
from fedavg_mnist.polling import EngineWakeups, engine_loaded, engine_wakeups

RAY_ADDRESS = "RAY_ADDRESS"
LOCAL_RAY = "local"  # Ray's own word for "start a new Ray here"


def ray_of_its_own() -> None:
    """Have a `ray.init()` without address start a new Ray, unless `RAY_ADDRESS` is set.

    Left set for the rest of the process (`flwr-simulation` runs one run): the engine may
    start its Ray after the `ServerApp` has ended, when the app fails at once.
    """
    if not os.environ.get(RAY_ADDRESS):
        os.environ[RAY_ADDRESS] = LOCAL_RAY


@contextmanager
def adjusted_engine(config: RunConfig) -> Iterator[EngineWakeups | None]:
    """Adjust the simulation engine of this process for the run; nothing without an engine."""
    if not engine_loaded():  # a deployment's ServerApp process: no engine here
        yield None
        return
    ray_of_its_own()
    with engine_wakeups() if config.fast_polling else nullcontext() as wakeups:
        yield wakeups
