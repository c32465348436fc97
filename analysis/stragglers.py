"""Who closes a synchronous round, and why: the evidence for "can a per-device policy shorten it?".

A synchronous round lasts until its last accepted device reports, so its length is set by one
straggler. FedSpine's bandit can shorten rounds only if stragglers are *predictable from a device's own
history*: the same devices, slow for the same reason (compute it can shed by pruning more, or an upload it
can shrink with a smaller rank), round after round. Where the straggler is a different device each
round, made late by a transient bandwidth trough, no per-device arm choice made before the round can
foresee it. :func:`straggler_table` measures that from ``device_rounds`` alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PHASES = {"download": ("start_s", "download_end_s"), "compute": ("download_end_s", "compute_end_s"),
          "upload": ("compute_end_s", "upload_end_s")}


def stragglers(device_rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, round): the last accepted device, its type, and the phase that made it late.

    The *cause* is the phase whose duration exceeds that phase's median over the round's accepted
    devices by the most seconds. ``excess_s`` is that excess; ``round_over_median`` is the round's
    length over the median device's completion time (how much the straggler stretched the round).
    """
    ok = device_rounds[device_rounds["outcome"] == "ok"].copy()
    if not len(ok):
        return pd.DataFrame(columns=["run", "method", "seed", "round", "device_id", "device_type", "cause",
                                     "excess_s", "round_over_median", "repeat"])
    for phase, (a, b) in PHASES.items():
        ok[phase] = ok[b] - ok[a]
    ok["took_s"] = ok["upload_end_s"] - ok["start_s"]
    rows = []
    for (run, rnd), g in ok.groupby(["run", "round"], sort=True):
        last = g.loc[g["upload_end_s"].idxmax()]
        excess = {p: float(last[p] - g[p].median()) for p in PHASES}
        cause = max(excess, key=excess.get)
        median_took = float(g["took_s"].median())
        rows.append({"run": run, "method": last["method"], "seed": int(last["seed"]), "round": int(rnd),
                     "device_id": last["device_id"], "device_type": last["device_type"], "cause": cause,
                     "excess_s": excess[cause],
                     "round_over_median": float(last["took_s"]) / median_took if median_took > 0 else np.nan})
    out = pd.DataFrame(rows).sort_values(["run", "round"]).reset_index(drop=True)
    out["repeat"] = out.groupby("run")["device_id"].transform(lambda s: s.duplicated())
    return out


def straggler_table(device_rounds: pd.DataFrame) -> pd.DataFrame:
    """Per method (pooled over runs and rounds): share of rounds closed by each cause, by each device
    type, the share whose straggler had already closed an earlier round of the same run, and the median
    stretch of the round over its median device."""
    s = stragglers(device_rounds)
    if not len(s):
        return pd.DataFrame()
    rows = []
    for method, g in s.groupby("method"):
        row = {"method": method, "rounds": len(g)}
        for phase in PHASES:
            row[f"cause_{phase}"] = float((g["cause"] == phase).mean())
        for typ, share in g["device_type"].value_counts(normalize=True).sort_index().items():
            row[f"type_{typ}"] = float(share)
        row["repeat"] = float(g["repeat"].mean())
        row["distinct_devices"] = float(g.groupby("run")["device_id"].nunique().mean())
        row["median_round_over_median"] = float(g["round_over_median"].median())
        rows.append(row)
    return pd.DataFrame(rows).fillna(0.0)
