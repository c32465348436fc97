"""What S-UCB learns on the timing layer alone (shipped fedspine-testbed traces; cost model of a model
preset's shape, by default smollm2-135m with batch 8 x 128 tokens: see simfed.decisions.timing_study).

Writes a PNG with, per device type, the chosen rank and pruning increment over rounds, and the mean
waiting time per round for S-UCB and for one fixed arm (p=0.1, r=8) measured in the same run; prints
the numbers. Usage: python benchmarks/sucb_timing_study.py [--devices 80] [--rounds 150] [--seed 0]
[--preset smollm2-135m] [--batch-size 8] [--seq-len 128] [--out sucb_timing.png]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simfed.decisions.policies import make_policy  # noqa: E402
from simfed.experiments.timing_study import (  # noqa: E402
    STUDY_BATCH_SIZE,
    STUDY_PRESET,
    STUDY_SEQ_LEN,
    STUDY_SUCB_PARAMS,
    run_timing_study,
    study_cost,
    waiting_by_round,
)
from simfed.records import Arm  # noqa: E402


def population(n: int, seed: int):
    shipped = Path(__file__).resolve().parents[1] / "traces" / "fedspine-testbed"
    if shipped.exists() and n == 80:
        from simfed.timing.tracefile import read_population

        return read_population(shipped)
    from simfed.timing.generators import generate

    return generate("fedspine-testbed", n_devices=n, seed=seed, duration_s=3600.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default=STUDY_PRESET)
    ap.add_argument("--batch-size", type=int, default=STUDY_BATCH_SIZE)
    ap.add_argument("--seq-len", type=int, default=STUDY_SEQ_LEN)
    ap.add_argument("--out", default="sucb_timing.png")
    args = ap.parse_args()
    pop = population(args.devices, args.seed)
    cost = study_cost(args.preset, args.batch_size, args.seq_len)
    common = dict(rounds=args.rounds, s_star=0.5, local_iters=20, tau=20)
    sucb = run_timing_study(pop, cost, make_policy("sucb", seed=args.seed, **STUDY_SUCB_PARAMS), **common)
    fixed = run_timing_study(pop, cost, make_policy("fixed", arm=Arm(0.1, 8)), **common)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for dtype, grp in sucb.groupby("device_type"):
        per_round = grp.groupby("round")[["r", "p"]].mean().rolling(10, min_periods=1).mean()
        axes[0].plot(per_round.index, per_round["r"], label=dtype)
        axes[1].plot(per_round.index, per_round["p"], label=dtype)
    for name, tab in (("S-UCB", sucb), ("fixed p=0.1, r=8", fixed)):
        w = waiting_by_round(tab)
        axes[2].plot(w.index, w.rolling(10, min_periods=1).mean(), label=name)
    axes[0].set_ylabel("chosen rank (10-round mean)")
    axes[1].set_ylabel("chosen p (10-round mean)")
    axes[2].set_ylabel("mean waiting per round, s (10-round mean)")
    fig.suptitle(f"S-UCB on the timing layer: {args.preset}, batch {args.batch_size} x {args.seq_len}, {len(pop)} boards", fontsize=9)
    for ax in axes:
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".png", dir=out.parent.resolve())
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)

    last = sucb[sucb["round"] >= args.rounds * 2 // 3]
    print("S-UCB, last third of rounds, mean per device type:")
    print(last.groupby("device_type")[["p", "r", "completion_s"]].mean().round(3).to_string())
    for name, tab in (("S-UCB", sucb), ("fixed", fixed)):
        w = waiting_by_round(tab)
        print(f"{name}: mean waiting first 10 rounds {w.iloc[:10].mean():.3f} s, last 25 rounds {w.iloc[-25:].mean():.3f} s; "
              f"last device done at {tab['end_s'].max():.1f} simulated s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
