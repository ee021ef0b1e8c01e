"""What central DP's noise buys: (ε, δ) after a run's rounds, by Opacus's RDP accountant.

Each round the server clips every sampled client's update to `dp.clipping_norm` and adds
Gaussian noise of std `dp.noise_multiplier` × `dp.clipping_norm` / m to their mean (Flower's
`DifferentialPrivacyServerSideFixedClipping`): one Gaussian mechanism a round, with noise
multiplier σ relative to one client's clipped update, on the m of K clients sampled. The
guarantee is per client (user-level: one client's data added or removed).

It is counted as the Poisson-subsampled Gaussian mechanism with rate q = m/K, one step a
round, by Rényi DP (Mironov et al. 2019; Opacus's `compute_rdp` and `get_privacy_spent`).
Flower samples exactly m clients without replacement; the Poisson accountant is the usual
approximation for it (DP-FedAvg, McMahan et al. 2018, counted it the same way), not a bound
proved for fixed-size sampling.
"""

from typing import Any

from fedavg_mnist.config import DifferentialPrivacyConfig

# Rényi orders to search: Opacus's default set
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

ACCOUNTANT = (
    "Opacus RDP accountant, Poisson-subsampled Gaussian mechanism (q = m/K, one step a round; "
    "Flower samples exactly m clients: an approximation); per client"
)


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Return ε such that `rounds` rounds of the subsampled Gaussian mechanism are (ε, δ)-DP.

    Parameters
    ----------
    noise_multiplier : float
        σ: the noise's standard deviation over the clipping norm (> 0).
    sampling_rate : float
        q = m/K, the fraction of clients sampled each round, in (0, 1].
    rounds : int
        Rounds of aggregation so far (≥ 0); none spends no privacy.
    delta : float
        δ in (0, 1).

    """
    if rounds == 0:
        return 0.0
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(
        q=sampling_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=RDP_ORDERS
    )
    spent, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(spent)


def privacy_record(
    dp: DifferentialPrivacyConfig, num_sampled: int, num_clients: int, rounds: int
) -> dict[str, Any]:
    """Return the `privacy` entry of `results.json`: (ε, δ) after `rounds`, and its method.

    ε is null without noise (σ = 0: no guarantee).
    """
    sampling_rate = num_sampled / num_clients
    spent = None
    if dp.noise_multiplier > 0:
        spent = epsilon(dp.noise_multiplier, sampling_rate, rounds, dp.delta)
    return {
        "epsilon": spent,
        "delta": dp.delta,
        "rounds": rounds,
        "noise_multiplier": dp.noise_multiplier,
        "clipping_norm": dp.clipping_norm,
        "sampling_rate": sampling_rate,
        "accountant": ACCOUNTANT,
    }
