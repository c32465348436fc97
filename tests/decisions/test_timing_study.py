"""On the timing layer alone (engine + cost model + fedspine-testbed traces), S-UCB learns to give the
slow boards (TX2) smaller ranks than the fast ones (AGX Xavier)."""

from pathlib import Path

import pytest

from simfed.decisions.policies import make_policy
from simfed.decisions.timing_study import run_timing_study

engine = pytest.importorskip("simfed.timing.engine")

ROOT = Path(__file__).resolve().parents[2]


def _population(n, seed):
    shipped = ROOT / "traces" / "fedspine-testbed"
    if shipped.exists() and n is None:
        from simfed.timing.tracefile import read_population

        return read_population(shipped)
    from simfed.timing.generators import generate

    return generate("fedspine-testbed", n_devices=n, seed=seed, duration_s=3600.0)


def _cost():
    from simfed.accuracy.presets import PRESETS
    from simfed.timing.cost import CostModel

    return CostModel(PRESETS["tiny"].shape(), batch_size=8, seq_len=80)


@pytest.mark.parametrize("seed", [0, 1])
def test_sucb_gives_stragglers_smaller_ranks(seed):
    table = run_timing_study(_population(24, seed), _cost(), make_policy("sucb", seed=seed), rounds=100,
                             s_star=0.5, local_iters=20, tau=20)
    late = table[table["round"] >= 67].groupby("device_type")["r"].mean()
    # measured (seeds 0-3): TX2 12-20, AGX 20-23
    assert late["tx2"] < late["agx-xavier"] - 2, late
    # the run is deterministic
    again = run_timing_study(_population(24, seed), _cost(), make_policy("sucb", seed=seed), rounds=100,
                             s_star=0.5, local_iters=20, tau=20)
    assert again.equals(table)


def test_fixed_policy_keeps_its_arm_and_every_device_reaches_target():
    from simfed.records import Arm

    table = run_timing_study(_population(8, 0), _cost(), make_policy("fixed", arm=Arm(0.1, 8)), rounds=8,
                             s_star=0.5, local_iters=20, tau=20)
    assert set(zip(table.p, table.r)) == {(0.1, 8)}
    assert table[table["round"] == 7]["sparsity_after"].tolist() == pytest.approx([0.5] * 8)
