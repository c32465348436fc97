"""Issue #4 on the timing layer alone (engine + cost model of a realistic model shape + the shipped
fedspine-testbed traces): S-UCB learns to give the slow boards (TX2) smaller ranks than the fast ones
(AGX Xavier), and the mean waiting time per round falls over rounds, below that of a fixed arm."""

from pathlib import Path

import pytest

from simfed.decisions.policies import make_policy
from simfed.experiments.timing_study import STUDY_SUCB_PARAMS, run_timing_study, study_cost, waiting_by_round
from simfed.records import Arm

engine = pytest.importorskip("simfed.timing.engine")

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 120
COMMON = dict(rounds=ROUNDS, s_star=0.5, local_iters=20, tau=20)


def _shipped():
    """The population these numbers were measured on: the first testbed (its phones' Wi-Fi variant since v2),
    which the shipped trace directory held until v2 (the same population, generated)."""
    from simfed.timing.generators import generate

    return generate("fedspine-testbed-wifi", seed=0)


def _generated(n, seed):
    from simfed.timing.generators import generate

    return generate("fedspine-testbed-wifi", n_devices=n, seed=seed, duration_s=3600.0)


@pytest.fixture(scope="module")
def runs():
    pop, cost = _shipped(), study_cost()
    fixed = run_timing_study(pop, cost, make_policy("fixed", arm=Arm(0.1, 8)), **COMMON)
    sucb = {seed: run_timing_study(pop, cost, make_policy("sucb", seed=seed, **STUDY_SUCB_PARAMS), **COMMON)
            for seed in (0, 1, 2)}
    return fixed, sucb


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sucb_gives_tx2_smaller_ranks_than_agx(runs, seed):
    table = runs[1][seed]
    late = table[table["round"] >= ROUNDS * 2 // 3].groupby("device_type")["r"].mean()
    # measured (120 rounds; shipped traces, policy seeds 0-2, counter-based draws): TX2 5.5-6.2, AGX 6.2-9.6
    # (seed 2's gap, 0.61, is the narrowest)
    assert late["tx2"] < late["agx-xavier"] - 0.5, late


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sucb_waiting_falls_over_rounds(runs, seed):
    w = waiting_by_round(runs[1][seed])
    first, last = w.iloc[:10].mean(), w.iloc[-25:].mean()
    # measured: 38-42 s in the first 10 rounds -> 22-25 s in the last 25 (ratio 0.54-0.64)
    assert last < 0.75 * first, (first, last)


def test_sucb_waits_no_longer_than_a_good_fixed_arm(runs):
    """A guard, not a win: the fixed arm (p=0.1, r=8) is a well-chosen middle arm whose waiting also
    falls as the model shrinks (37.7 -> 26.6 s). S-UCB's late waiting is 0.84-0.93 of it (mean 0.87);
    the previous defaults (w_R = 0.5, c = 0.2, nu = 0.3) waited about 1.4 times as long."""
    fixed, sucb = runs
    wf_last = waiting_by_round(fixed).iloc[-25:].mean()
    ratios = [waiting_by_round(t).iloc[-25:].mean() / wf_last for t in sucb.values()]
    assert sum(ratios) / len(ratios) < 1.1, ratios


def test_both_halves_hold_on_another_trace_draw():
    # the generator's seed-2 draw of the 80 boards; measured (policy seeds 0-2): waiting ratio
    # 0.50-0.66, TX2 5.2-6.6 vs AGX 7.7-9.0 (this test runs seed 0: 0.50, 5.4 vs 9.0)
    pop, cost = _generated(80, 2), study_cost()
    t = run_timing_study(pop, cost, make_policy("sucb", seed=0, **STUDY_SUCB_PARAMS), **COMMON)
    w = waiting_by_round(t)
    assert w.iloc[-25:].mean() < 0.75 * w.iloc[:10].mean()
    late = t[t["round"] >= ROUNDS * 2 // 3].groupby("device_type")["r"].mean()
    assert late["tx2"] < late["agx-xavier"] - 0.5, late


def test_timing_study_is_deterministic():
    pop, cost = _generated(12, 0), study_cost()
    a = run_timing_study(pop, cost, make_policy("sucb", seed=3, **STUDY_SUCB_PARAMS), **{**COMMON, "rounds": 30})
    b = run_timing_study(pop, cost, make_policy("sucb", seed=3, **STUDY_SUCB_PARAMS), **{**COMMON, "rounds": 30})
    assert a.equals(b)


def test_fixed_policy_keeps_its_arm_and_every_device_reaches_target():
    table = run_timing_study(_generated(8, 0), study_cost("tiny", 8, 80), make_policy("fixed", arm=Arm(0.1, 8)),
                             rounds=8, s_star=0.5, local_iters=20, tau=20)
    assert set(zip(table.p, table.r)) == {(0.1, 8)}
    assert table[table["round"] == 7]["sparsity_after"].tolist() == pytest.approx([0.5] * 8)
