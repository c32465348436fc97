"""``simfed traces generate | import | show`` through :func:`simfed.cli.main`."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from simfed.cli import main
from simfed.timing.tracefile import read_population

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "traces" / "fedspine-testbed"


def test_generate_then_show(tmp_path: Path, capsys):
    out = tmp_path / "tb"
    assert main(["traces", "generate", "fedspine-testbed", "--out", str(out), "--devices", "16", "--seed", "5"]) == 0
    pop = read_population(out)
    assert len(pop) == 16 and pop.meta["seed"] == 5
    assert "wrote 16 devices" in capsys.readouterr().out
    assert main(["traces", "show", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert set(lines) == {"tx2", "xavier-nx", "agx-xavier"}
    assert lines["tx2"].split()[1] == "6" and lines["agx-xavier"].split()[1] == "2"
    assert "online share" in text and "fedspine-testbed, seed 5" in text


def test_generate_options_reach_the_generator(tmp_path: Path):
    out = tmp_path / "p"
    assert main(["traces", "generate", "phones", "--out", str(out), "--devices", "20", "--set", "cellular_share=1.0",
                 "--set", "availability=false"]) == 0  # fmt: skip
    pop = read_population(out)
    assert pop.types() == ["phone-cellular"]
    assert all(d.availability.is_always for d in pop.devices)


def test_import_then_show(tmp_path: Path, capsys):
    cap = tmp_path / "client_device_capacity"
    cap.write_bytes(pickle.dumps({i: {"computation": 100.0 + i, "communication": 2000.0} for i in range(5)}))
    out = tmp_path / "fs"
    assert main(["traces", "import", "fedscale", str(cap), "--out", str(out), "--set", "flops_per_sample=1e9"]) == 0
    pop = read_population(out)
    assert len(pop) == 5 and pop.devices[0].compute_flops.mean() == pytest.approx(1e10)
    assert main(["traces", "show", str(out)]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "fedscale" and row[1] == "5"
    assert row[4] == "2.05"  # 2,000 FedScale kbit/s (1 kbit = 1024 bit) = 2.048 Mbit/s down


@pytest.mark.parametrize(
    "argv, message",
    [
        (["traces", "show", "/nonexistent/trace-dir"], "not a trace directory"),
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--set", "nonsense"], "--set expects KEY=VALUE"),
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--set", "bogus=1"], "--set bogus: unknown option of generator 'phones'"),
        (["traces", "import", "mahimahi", "{tmp}/missing.down", "--out", "{tmp}/y"], "no such file"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path: Path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped testbed traces not generated yet")
def test_shipped_testbed_matches_the_generator(tmp_path: Path):
    """traces/fedspine-testbed is exactly what `simfed traces generate fedspine-testbed --seed 0` writes."""
    assert main(["traces", "generate", "fedspine-testbed", "--out", str(tmp_path / "tb"), "--seed", "0"]) == 0
    for name in ("devices.csv", "compute.csv", "downlink.csv", "uplink.csv", "aps.csv", "meta.json"):
        assert (tmp_path / "tb" / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 5 * 1024**2
