"""The paper tables' presets (`conf/experiment/`): the learning rate each cell is run at.

A preset's `lr_table` maps a cell's key (`lr_key`) to the η this project measured best for
it; Hydra's `tuned_lr` resolver reads it while it composes the config.
"""

import math
from collections.abc import Mapping
from typing import Any

from fedavg_mnist.config import FULL_BATCH


def lr_key(
    partition: str, local_epochs: int, batch_size: int | None, client_fraction: float | None = None
) -> str:
    """Key of a preset's `lr_table`, e.g. `iid_E5_B10`, or `iid_C0p1_E1_B10` for C=0.1 only."""
    batch = "inf" if batch_size is None or batch_size == math.inf else str(batch_size)
    fraction = (
        "" if client_fraction is None else "_C" + str(float(client_fraction)).replace(".", "p")
    )
    return f"{partition}{fraction}_E{local_epochs}_B{batch}"


def tuned_lr(
    table: Mapping[str, float],
    partition: str,
    client_fraction: float,
    local_epochs: int,
    batch_size: Any,
    default: float,
) -> float:
    """η measured best for (partition, C, E, B), else for (partition, E, B), else `default`."""
    batch = None if batch_size in (None, FULL_BATCH, math.inf) else int(batch_size)
    for key in (
        lr_key(partition, local_epochs, batch, client_fraction),
        lr_key(partition, local_epochs, batch),
    ):
        if key in table:
            return float(table[key])
    return float(default)
