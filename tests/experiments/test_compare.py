"""The paired comparison tables (analysis.compare) and ``simfed compare``, on hand-built run directories."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import compare, load
from simfed.cli import main
from simfed.experiments.outputs import DEVICE_ROUND_COLUMNS, ROUND_COLUMNS, RunDir, records
from simfed.experiments.tables import DeviceRoundRow, RoundRow, RunTotals
from simfed.experiments.runner import summarise


def round_row(r: int, end_s: float, accuracy: float, min_sparsity: float, evaluated: bool = True) -> dict:
    start = 0.0 if r == 0 else end_s - 1.0
    return {c: math.nan for c in ROUND_COLUMNS} | {
        "round": r, "start_s": start, "end_s": end_s, "duration_s": end_s - start, "n_selected": 1, "n_ok": 1,
        "mean_wait_s": 0.0, "accuracy": accuracy if evaluated else math.nan, "evaluated": evaluated,
        "min_sparsity": min_sparsity, "mean_sparsity": min_sparsity}


def device_row(r: int, end_s: float) -> dict:
    return {c: math.nan for c in DEVICE_ROUND_COLUMNS} | {
        "round": r, "device_id": "d0", "device_type": "tx2", "outcome": "ok", "p": 0.1, "r": 4,
        "start_s": end_s - 1.0, "end_s": end_s, "wait_s": 0.0, "n_samples": 1, "reward": 0.0}


def fake_run(root, method: str, seed: int, rounds: list[tuple], s_star: float = 0.5, final_accuracy: float = 0.5,
             target: float | None = None, mean_wait_s: float = 1.0, summary: dict | None = None):
    """A run directory with the given rounds, each (end_s, accuracy, min_sparsity[, evaluated]); round numbers from 0."""
    rows = [round_row(i, *spec) for i, spec in enumerate(rounds)]
    devs = [device_row(i, spec[0]) for i, spec in enumerate(rounds)]
    base = {"method": method, "seed": seed, "simulated_time_s": rows[-1]["end_s"], "target_accuracy": target,
            "time_to_target_s": None, "final_accuracy": final_accuracy, "final_sparsity": s_star, "s_star": s_star,
            "mean_wait_s": mean_wait_s, "inference_flops_rel": 1.0 - s_star}
    rd = RunDir(root / f"{method}-s{seed}")
    rd.write_config(f'method = "{method}"\nseed = {seed}\n')
    rd.write_tables([], rows, devs, base | (summary or {}))
    return rd.path


def times(tta: pd.DataFrame, method: str) -> dict:
    g = tta[tta["method"] == method]
    return {int(s): (t, r) for s, t, r in zip(g["seed"], g["time_s"], g["round"])}


# ------------------------------------------------------------------------------------ time to accuracy


def test_time_to_accuracy_needs_the_deployable_model(tmp_path):
    # 0.50 at round 1 does not count (min sparsity 0.3 < s* 0.5); round 2 is not evaluated; round 3 is it
    fake_run(tmp_path, "fedspine", 0, [(10, 0.40, 0.2), (20, 0.50, 0.3), (30, 0.49, 0.5, False), (40, 0.48, 0.5)])
    # s* = 0 (never prunes): accuracy alone counts
    fake_run(tmp_path, "hetlora", 0, [(10, 0.30, 0.0), (20, 0.48, 0.0), (30, 0.49, 0.0)], s_star=0.0)
    # never reaches 0.47 at s*
    fake_run(tmp_path, "fedavg", 0, [(15, 0.60, 0.1), (25, 0.46, 0.5)])
    runs = load.load_runs([tmp_path], events=False)
    tta = compare.time_to_accuracy(runs, 0.47)
    assert list(tta.columns) == ["run", "method", "seed", "time_s", "round"]
    assert times(tta, "fedspine") == {0: (40.0, 3)}
    assert times(tta, "hetlora") == {0: (20.0, 1)}
    t, r = times(tta, "fedavg")[0]
    assert math.isnan(t) and math.isnan(r)
    # a lower level is met earlier, still only at s*
    assert times(compare.time_to_accuracy(runs, 0.45), "fedavg") == {0: (25.0, 1)}
    assert times(compare.time_to_accuracy(runs, 0.40), "fedspine") == {0: (40.0, 3)}


def test_time_to_accuracy_agrees_with_the_runner(tmp_path):
    """The runner's summarise() computes time_to_target_s from the same rows: both must agree."""
    specs = [(10, 0.40, 0.2), (20, 0.52, 0.3), (30, 0.51, 0.5, False), (40, 0.50, 0.5), (50, 0.55, 0.5)]
    rows = [round_row(i, *spec) for i, spec in enumerate(specs)]
    devs = [device_row(i, spec[0]) for i, spec in enumerate(specs)]
    cfg = SimpleNamespace(name="t", method="fedspine", seed=3, mode="full", target_accuracy=0.5,
                          train=SimpleNamespace(seq_len=8))
    totals = RunTotals(s_star=0.5, target_accuracy=0.5)
    for row, dev in zip(records(rows, RoundRow), records(devs, DeviceRoundRow)):
        totals.add(row, [dev])
    loop = SimpleNamespace(state=SimpleNamespace(totals=totals, sparsity=np.array([0.5])), s_star=0.5)
    cost = SimpleNamespace(inference_flops=lambda s, n: (1.0 - s) * n, inference_memory_bytes=lambda s: 1.0 - s)
    summary = summarise(cfg, loop, {"accuracy": 0.55, "loss": 1.0}, cost, n_devices=1)
    assert summary["time_to_target_s"] == 40.0  # sanity: the runner skips rounds 1 and 2
    rd = RunDir(tmp_path / "fedspine-s3")
    rd.write_config('method = "fedspine"\nseed = 3\n')
    rd.write_tables([], rows, devs, summary)
    runs = load.load_runs([tmp_path], events=False)
    tta = compare.time_to_accuracy(runs, summary["target_accuracy"])
    assert times(tta, "fedspine") == {3: (summary["time_to_target_s"], summary["rounds_to_target"])}


# ------------------------------------------------------------------------------------ paired tables


@pytest.fixture
def three_seeds(tmp_path):
    """fedspine reaches 0.47 at 10/20/30 s; hetlora at 25/30/90 s (ratios 2.5, 1.5, 3.0);
    fedavg ran seeds 0 and 2 only and reaches 0.47 only in seed 2."""
    ref_t, het_t = [10.0, 20.0, 30.0], [25.0, 30.0, 90.0]
    for seed in range(3):
        fake_run(tmp_path, "fedspine", seed, [(ref_t[seed] / 2, 0.30, 0.2), (ref_t[seed], 0.48, 0.5),
                                              (100.0 + seed, 0.49, 0.5)],
                 final_accuracy=0.49 + 0.01 * seed, target=0.47, mean_wait_s=1.0 + seed)
        fake_run(tmp_path, "hetlora", seed, [(het_t[seed], 0.47, 0.0), (200.0 + 10 * seed, 0.47, 0.0)],
                 s_star=0.0, final_accuracy=0.47, target=0.47, mean_wait_s=4.0)
    fake_run(tmp_path, "fedavg", 0, [(50.0, 0.40, 0.5), (300.0, 0.44, 0.5)], final_accuracy=0.44, target=0.47)
    fake_run(tmp_path, "fedavg", 2, [(50.0, 0.40, 0.5), (60.0, 0.47, 0.5)], final_accuracy=0.45, target=0.47)
    return load.load_runs([tmp_path], events=False)


def t_interval(values, level=0.95):
    v = np.asarray(values, dtype=float)
    return v.mean(), stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)


def test_paired_speedup_and_its_ci(three_seeds):
    tab = compare.speed_table(three_seeds, [0.47]).set_index("method")
    het = tab.loc["hetlora"]
    mean, half = t_interval([2.5, 1.5, 3.0])
    assert het["reached"] == 3 and het["n"] == 3 and het["speedup_n"] == 3
    assert het["speedup"] == pytest.approx(mean) and het["speedup_ci"] == pytest.approx(half)
    t_mean, t_half = t_interval([25.0, 30.0, 90.0])
    assert het["time_s"] == pytest.approx(t_mean) and het["time_s_ci"] == pytest.approx(t_half)
    # total simulated time ratio: hetlora 200/210/220 over fedspine 100/101/102
    r_mean, r_half = t_interval([200 / 100, 210 / 101, 220 / 102])
    assert het["sim_time_ratio"] == pytest.approx(r_mean) and het["sim_time_ratio_ci"] == pytest.approx(r_half)
    ref = tab.loc["fedspine"]
    assert ref["speedup"] == pytest.approx(1.0) and ref["speedup_ci"] == pytest.approx(0.0)
    # a 99% interval is wider
    wide = compare.speed_table(three_seeds, [0.47], level=0.99).set_index("method").loc["hetlora", "speedup_ci"]
    assert wide == pytest.approx(t_interval([2.5, 1.5, 3.0], 0.99)[1]) and wide > half


def test_missing_seed_pairs_only_shared_seeds(three_seeds):
    tab = compare.speed_table(three_seeds, [0.47]).set_index("method")
    fa = tab.loc["fedavg"]
    assert fa["n"] == 2 and fa["reached"] == 1
    # one pair (seed 2: 60 s against 30 s): a mean without an interval
    assert fa["speedup_n"] == 1 and fa["speedup"] == pytest.approx(2.0) and math.isnan(fa["speedup_ci"])
    assert fa["time_s"] == pytest.approx(60.0) and math.isnan(fa["time_s_ci"])
    # simulated time pairs seeds 0 and 2 only
    mean, half = t_interval([300 / 100, 60 / 102])
    assert fa["sim_time_n"] == 2
    assert fa["sim_time_ratio"] == pytest.approx(mean) and fa["sim_time_ratio_ci"] == pytest.approx(half)
    acc = compare.accuracy_table(three_seeds).set_index("method").loc["fedavg"]
    # gaps (fedspine − fedavg) in points: seed 0: 49 − 44, seed 2: 51 − 45
    mean, half = t_interval([5.0, 6.0])
    assert acc["n"] == 2 and acc["acc_gap_n"] == 2
    assert acc["acc_gap_pts"] == pytest.approx(mean) and acc["acc_gap_pts_ci"] == pytest.approx(half)


def test_accuracy_table_by_hand(three_seeds):
    tab = compare.accuracy_table(three_seeds)
    assert tab["method"].tolist()[0] == "fedspine"
    het = tab.set_index("method").loc["hetlora"]
    mean, half = t_interval([2.0, 3.0, 4.0])  # 49/50/51 − 47 points
    assert het["acc_gap_pts"] == pytest.approx(mean) and het["acc_gap_pts_ci"] == pytest.approx(half)
    assert het["final_accuracy"] == pytest.approx(0.47) and het["final_sparsity"] == 0.0
    assert het["inference_flops_rel"] == pytest.approx(1.0)
    ref = tab.set_index("method").loc["fedspine"]
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert ref["mean_wait_s"] == pytest.approx(mean) and ref["mean_wait_s_ci"] == pytest.approx(half)
    assert ref["acc_gap_pts"] == pytest.approx(0.0) and ref["acc_gap_n"] == 3


def test_reference_must_be_present(three_seeds):
    with pytest.raises(ValueError, match="'nope'"):
        compare.accuracy_table(three_seeds, reference="nope")


def test_default_thresholds(three_seeds):
    # target 0.47; lowest evaluated fedspine accuracy 0.30; lowest final accuracy 0.44
    assert compare.default_thresholds(three_seeds) == [0.37, 0.405, 0.426, 0.47]


def test_markdown_has_both_tables(three_seeds):
    text = compare.markdown(three_seeds, [0.47])
    mean, half = t_interval([2.5, 1.5, 3.0])
    assert f"| 0.470 | hetlora | 3/3 | 48.3 ± {t_interval([25, 30, 90])[1]:.1f} | {mean:.2f}× ± {half:.2f} | 3 |" in text
    assert "| 0.470 | fedavg | 1/2 | 60.0 | 2.00× | 1 |" in text
    acc_mean, acc_half = t_interval([0.49, 0.50, 0.51])
    assert f"| fedspine | 3 | {acc_mean:.3f} ± {acc_half:.3f} |" in text
    assert "95% Student-t" in text and "paired by seed" in text
    default = compare.markdown(three_seeds)
    assert "| 0.405 | fedspine |" in default and "| 0.470 | fedavg |" in default


def test_timing_only_runs_still_give_tables(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "fedspine", seed, [(10.0, math.nan, 0.5, False), (20.0 + seed, math.nan, 0.5, False)],
                 final_accuracy=math.nan)
        fake_run(tmp_path, "hetlora", seed, [(30.0, math.nan, 0.0, False), (40.0, math.nan, 0.0, False)],
                 s_star=0.0, final_accuracy=math.nan)
    runs = load.load_runs([tmp_path], events=False)
    assert compare.default_thresholds(runs) == []
    text = compare.markdown(runs)
    assert "No accuracy level to time" in text and "| hetlora | 2 | – | – | 0 |" in text
    het = compare.speed_table(runs, [0.5]).set_index("method").loc["hetlora"]
    assert het["reached"] == 0 and math.isnan(het["speedup"]) and het["speedup_n"] == 0
    assert het["sim_time_ratio"] == pytest.approx(np.mean([40 / 20, 40 / 21]))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_the_file(three_seeds, tmp_path, capsys):
    root = three_seeds.runs[0].path.parent
    out = tmp_path / "out" / "results.md"
    out.parent.mkdir()
    assert main(["compare", str(root), "--targets", "0.47", "--out", str(out), "--reference", "hetlora"]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    assert "| 0.470 | fedspine |" in text and "speed-up of hetlora" in text
    assert [p.name for p in out.parent.iterdir()] == ["results.md"]  # no temporary file left


@pytest.mark.parametrize("args, names", [
    (["--level", "1.0"], "--level"),
    (["--targets", "0.4,1.5"], "--targets"),
    (["--targets", "0.4,x"], "--targets"),
    (["--reference", "nope"], "--reference"),
])
def test_cli_errors_name_the_argument(three_seeds, capsys, args, names):
    root = three_seeds.runs[0].path.parent
    assert main(["compare", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert names in err and len(err.strip().splitlines()) == 1


def test_cli_without_runs(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_two_sweeps_with_the_same_member_names_are_refused_until_one_is_renamed(tmp_path):
    for sweep in ("a", "b"):
        for method in ("fedspine", "uniform"):
            fake_run(tmp_path / sweep, method, 0, [(10.0, 0.40, 0.5), (20.0, 0.48, 0.5)], target=0.47)
    both = load.load_runs([tmp_path / "a", tmp_path / "b"], events=False)
    with pytest.raises(ValueError, match=r"several runs for seed 0 .*rename one variant's directories"):
        compare.accuracy_table(both)
    (tmp_path / "b" / "fedspine-s0").rename(tmp_path / "b" / "fedspine-s0-capped")
    shutil.rmtree(tmp_path / "b" / "uniform-s0")
    renamed = load.load_runs([tmp_path / "a", tmp_path / "b"], events=False)
    methods = set(compare.accuracy_table(renamed, reference="uniform")["method"])
    assert methods == {"uniform", "fedspine", "fedspine-capped"}
