"""Parquet trace tables: chosen by extension, exact CSV <-> Parquet round trip, the same validation."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_trace_library import KINDS, library_population  # noqa: E402

from simfed.cli import main  # noqa: E402
from simfed.timing.tracefile import convert_directory, read_population, table_format, write_population  # noqa: E402
from simfed.timing.traces import AccessPoint, Population, SeriesRef, TraceError  # noqa: E402


def _population() -> Population:
    """Library references, own series with per-device periods, availability, access points."""
    pop = library_population(30, seed=21)
    devs = tuple(d if i % 3 else replace(d, ap="lab") for i, d in enumerate(pop.devices))
    return Population(devs, pop.meta, {"lab": AccessPoint("lab", 5e6, 2.5e6, "half")}, pop.library)


def _fingerprint(pop: Population) -> list:
    rows = []
    for d in pop.devices:
        row = [d.device_id, d.device_type, d.ram_bytes, d.latency_s, d.ap,
               d.availability.starts, d.availability.ends, d.availability.period_s]
        for attr in KINDS.values():
            s = getattr(d, attr)
            if type(s) is SeriesRef:
                row += [s.series_id, s.offset_s, s.scale, s._c0]
                s = s.base
            row += [s.times_s.tolist(), s.values.tolist(), s.period_s, s._cum]
        rows.append(row)
    lib = {k: {sid: (s.times_s.tolist(), s.values.tolist(), s.period_s, s._cum) for sid, s in v.items()}
           for k, v in pop.library.items()}
    return [rows, lib, pop.meta, pop.access_points]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_csv_parquet_round_trip_is_exact(tmp_path: Path):
    pop = _population()
    csv = write_population(pop, tmp_path / "csv")
    parquet = convert_directory(csv, tmp_path / "parquet")
    assert table_format(csv) == "csv" and table_format(parquet) == "parquet"
    names = set(_files(parquet))
    assert {"devices.parquet", "compute.parquet", "availability.parquet", "aps.parquet", "library/series.parquet",
            "library/downlink.parquet", "meta.json"} <= names and not any(n.endswith(".csv") for n in names)
    a, b = read_population(csv), read_population(parquet)
    assert _fingerprint(a) == _fingerprint(b) == _fingerprint(pop)
    back = convert_directory(parquet, tmp_path / "csv-again")  # the default: the other format
    assert _files(back) == _files(csv)  # byte for byte
    direct = write_population(pop, tmp_path / "direct", format="parquet")
    assert _fingerprint(read_population(direct)) == _fingerprint(pop)


def test_replay_answers_are_identical_from_either_format(tmp_path: Path):
    from simfed.timing.packed import PackedPopulation

    pop = _population()
    a = read_population(write_population(pop, tmp_path / "c"))
    b = read_population(write_population(pop, tmp_path / "p", format="parquet"))
    rng = np.random.default_rng(0)
    idx, t0, w = rng.integers(0, len(pop), 500), rng.uniform(0, 1e4, 500), rng.uniform(0, 1e7, 500)
    for attr in KINDS.values():
        np.testing.assert_array_equal(getattr(PackedPopulation.from_population(a), attr).finish_time(idx, t0, w),
                                      getattr(PackedPopulation.from_population(b), attr).finish_time(idx, t0, w))


def _parquet_dir(tmp_path: Path) -> Path:
    return write_population(_population(), tmp_path / "p", format="parquet")


def _edit(path: Path, fn) -> None:
    frame = pq.read_table(path).to_pandas()
    pq.write_table(pa.Table.from_pandas(fn(frame), preserve_index=False), path)


def _set(row: int, col: str, value):
    def fn(df):
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return fn


@pytest.mark.parametrize("fname, edit, pattern", [
    ("compute.parquet", _set(0, "rate", -5.0), r"compute\.parquet: device '\w+', field 'rate': negative or non-finite value -5\.0 at row 1"),
    ("devices.parquet", _set(3, "latency", -1.0), r"devices\.parquet: device 'dev0003', field 'latency': must be finite and >= 0, got -1\.0 \(row 4\)"),
    ("devices.parquet", _set(2, "device_id", "dev0001"), r"devices\.parquet: device 'dev0001' appears twice \(row 3\)"),
    ("devices.parquet", lambda df: df.drop(columns=["ram"]), r"devices\.parquet: missing column 'ram'"),
    ("availability.parquet", lambda df: _set(1, "end", "soon")(df.astype({"end": str})), r"availability\.parquet: device '\w+', field 'end': not a number \('soon'\) at row 2"),
    ("library/downlink.parquet", _set(0, "series_id", "ghost"), r"library/downlink\.parquet: series 'ghost' \(row 1\) is not in library/series\.parquet"),
])
def test_parquet_faults_give_the_csv_messages_with_rows(tmp_path: Path, fname, edit, pattern):
    d = _parquet_dir(tmp_path)
    _edit(d / fname, edit)
    with pytest.raises(TraceError, match=pattern):
        read_population(d)


def test_formats_may_mix_per_table(tmp_path: Path):
    d = _parquet_dir(tmp_path)
    dev = pq.read_table(d / "devices.parquet").to_pandas()
    (d / "devices.parquet").unlink()
    dev.to_csv(d / "devices.csv", index=False)  # one CSV table among Parquet ones
    assert _fingerprint(read_population(d)) == _fingerprint(_population())


def test_parquet_integer_ids_are_read_as_text(tmp_path: Path):
    pop = _population()
    devs = tuple(replace(d, device_id=str(7 + i), ap="") for i, d in enumerate(pop.devices[:3]))
    small = write_population(Population(devs, {}, {}, pop.library), tmp_path / "s", format="parquet")
    for f in small.glob("*.parquet"):
        t = pq.read_table(f).to_pandas()
        if "device_id" in t.columns:
            t["device_id"] = t["device_id"].astype(np.int64)
            pq.write_table(pa.Table.from_pandas(t, preserve_index=False), f)
    assert pq.read_table(small / "devices.parquet").schema.field("device_id").type == pa.int64()
    assert [x.device_id for x in read_population(small).devices] == ["7", "8", "9"]


def test_both_formats_of_one_table_is_an_error(tmp_path: Path):
    d = _parquet_dir(tmp_path)
    pq.read_table(d / "compute.parquet").to_pandas().to_csv(d / "compute.csv", index=False)
    with pytest.raises(TraceError, match=r"both compute\.csv and compute\.parquet exist; keep one"):
        read_population(d)


def test_not_parquet_is_one_error(tmp_path: Path):
    d = _parquet_dir(tmp_path)
    (d / "compute.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(TraceError, match=r"compute\.parquet: cannot read as Parquet"):
        read_population(d)


def test_cli_convert_and_generate_parquet(tmp_path: Path, capsys):
    out = tmp_path / "gen"
    assert main(["traces", "generate", "phones", "--out", str(out), "--devices", "30", "--format", "parquet"]) == 0
    assert (out / "devices.parquet").is_file() and not (out / "devices.csv").exists()
    assert main(["traces", "convert", str(out), str(tmp_path / "csv")]) == 0
    assert "(csv)" in capsys.readouterr().out
    assert main(["traces", "convert", str(tmp_path / "csv"), str(tmp_path / "pq"), "--format", "parquet"]) == 0
    assert _fingerprint(read_population(out)) == _fingerprint(read_population(tmp_path / "csv")) \
        == _fingerprint(read_population(tmp_path / "pq"))
    assert main(["traces", "convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "devices.csv: missing" in capsys.readouterr().err
