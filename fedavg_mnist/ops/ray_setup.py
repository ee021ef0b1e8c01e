"""Which Ray a simulation runs on: a Ray of its own, unless `RAY_ADDRESS` names a cluster.

Ray's `ray.init()` without an address joins the newest Ray running on the machine, also one
another run started, so two runs side by side would share (and starve) one Ray. Both
launchers therefore start their own unless the user sets Ray's standard `RAY_ADDRESS`:
the Hydra CLI passes `address="local"` itself (these arguments); under `flwr run`, the
`ServerApp` sets `RAY_ADDRESS=local` for its run (`fedavg_mnist.engine`).
"""

import os
import sys
from typing import Any

from fedavg_mnist.engine import LOCAL_RAY as LOCAL
from fedavg_mnist.engine import RAY_ADDRESS

# Ray prestarts one idle worker per CPU when the driver connects, but Flower gives its
# actors a runtime environment (PYTHONPATH), so they start workers of their own and the
# prestarted ones only compete with them for the CPU during start-up.
RAY_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def cluster_address() -> str | None:
    """Return the Ray cluster the user asked runs to join (`RAY_ADDRESS`), or None."""
    address = os.environ.get(RAY_ADDRESS, "")
    return None if address in ("", LOCAL) else address


def ray_system_config() -> dict[str, Any]:
    """Return the `_system_config` argument for `ray.init`, if this Ray takes one.

    `_system_config` is a private argument Ray takes through `**kwargs` and documents in
    `ray.init`'s docstring; a Ray whose docstring no longer names it keeps its default
    prestarting, and one warning says so.
    """
    import ray

    if "_system_config" in (ray.init.__doc__ or ""):
        return {"_system_config": RAY_SYSTEM_CONFIG}
    print(
        "warning: this Ray's init takes no _system_config: Ray prestarts its idle workers",
        file=sys.stderr,
        flush=True,
    )
    return {}


def local_ray_args(cpus: int) -> dict[str, Any]:
    """Return `ray.init`'s arguments that choose the run's Ray.

    A Ray of its own with `cpus` CPUs, or none to join the user's cluster (which refuses a
    driver's system config and CPU count).
    """
    if cluster_address():
        return {}
    return {"address": LOCAL, "num_cpus": cpus, **ray_system_config()}
