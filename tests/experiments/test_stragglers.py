"""Straggler attribution on hand-made device rounds."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.stragglers import straggler_table, stragglers


def dev(rnd, device, typ, dl, cp, ul, run="m-s0", outcome="ok"):
    start = 100.0 * rnd
    return {"run": run, "method": "m", "seed": 0, "round": rnd, "device_id": device, "device_type": typ,
            "outcome": outcome, "start_s": start, "download_end_s": start + dl, "compute_end_s": start + dl + cp,
            "upload_end_s": start + dl + cp + ul}


def test_cause_is_the_phase_with_the_largest_excess_and_repeats_are_counted():
    rows = [
        # round 0: c is last because of its upload (40 s vs median 2 s)
        dev(0, "a", "tx2", 1, 10, 2), dev(0, "b", "agx", 1, 8, 2), dev(0, "c", "agx", 1, 9, 40),
        # round 1: a is last because of compute (30 s vs median 10 s); an offline device is ignored
        dev(1, "a", "tx2", 1, 30, 2), dev(1, "b", "agx", 1, 10, 2), dev(1, "c", "agx", 1, 9, 3),
        dev(1, "d", "tx2", 1, 500, 500, outcome="offline"),
        # round 2: a again, by its download
        dev(2, "a", "tx2", 25, 10, 2), dev(2, "b", "agx", 1, 10, 2), dev(2, "c", "agx", 1, 9, 3),
    ]
    s = stragglers(pd.DataFrame(rows))
    assert s["device_id"].tolist() == ["c", "a", "a"]
    assert s["cause"].tolist() == ["upload", "compute", "download"]
    assert s["excess_s"].tolist() == pytest.approx([38.0, 20.0, 24.0])
    assert s["repeat"].tolist() == [False, False, True]
    assert s["round_over_median"].iloc[0] == pytest.approx(50 / 13)
    t = straggler_table(pd.DataFrame(rows)).iloc[0]
    assert (t["cause_upload"], t["cause_compute"], t["cause_download"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert (t["type_tx2"], t["type_agx"]) == pytest.approx((2 / 3, 1 / 3))
    assert t["repeat"] == pytest.approx(1 / 3) and t["distinct_devices"] == 2
