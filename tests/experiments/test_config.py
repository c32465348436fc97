"""Config loading: every error names the dotted key; overrides are typed; paths resolve against the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from simfed import config as C

GOOD = """
method = "fedspine"
rounds = 3
[traces]
generator = "fedspine-testbed"
devices = 8
[train]
local_iters = 4
tau = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_good_config_fills_defaults(tmp_path):
    cfg = C.load(write(tmp_path, GOOD))
    assert cfg.rounds == 3 and cfg.train.local_iters == 4 and cfg.train.tau == 2
    assert cfg.train.batch_size == C.TrainOptions().batch_size
    assert cfg.traces.devices == 8


@pytest.mark.parametrize(
    "extra, key",
    [
        ("[train]\nlrr = 1\n", "train.lrr"),
        ("bogus = 1\n", "bogus"),
        ("[engine]\novercommit = 0.5\n", "engine.overcommit"),
        ("[engine]\ndeadline_s = -1.0\n", "engine.deadline_s"),
        ("mode = \"fast\"\n", "mode"),
        ("s_star = 1.5\n", "s_star"),
        ("[policy]\nr_min = 8\nr_max = 4\n", "policy.r_max"),
        ("[model]\npreset = 3\n", "model.preset"),
        ("[model]\npretrain_corpus = \"bible\"\n", "model.pretrain_corpus"),
        ("[sweep]\nseeds = [0, -1]\n", "sweep.seeds[1]"),
        ("[sweep.grid]\n\"train.tau\" = [0]\n", "sweep.grid.train.tau"),
    ],
)
def test_bad_values_name_the_key(tmp_path, extra, key):
    # a top-level key goes before the tables; a table replaces GOOD's [train] (TOML cannot reopen it)
    path = write(tmp_path, extra + GOOD if not extra.startswith("[") else GOOD.replace("[train]\nlocal_iters = 4\ntau = 2\n", "") + extra)
    with pytest.raises(C.ConfigError) as err:
        C.load(path)
    msg = str(err.value)
    assert key in msg, msg
    assert str(path) in msg
    assert "\n" not in msg


def test_type_errors_name_key(tmp_path):
    with pytest.raises(C.ConfigError, match=r"train\.local_iters: expected an integer"):
        C.load(write(tmp_path, GOOD), ["train.local_iters=2.5"])
    with pytest.raises(C.ConfigError, match=r"rounds: expected an integer, got True"):
        C.load(write(tmp_path, GOOD), ["rounds=true"])


def test_traces_needs_exactly_one_source(tmp_path):
    with pytest.raises(C.ConfigError, match="traces"):
        C.load(write(tmp_path, GOOD), ["traces.dir=somewhere"])


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = C.load(write(tmp_path, GOOD), ["train.lr=1e-3", "engine.deadline_s=30", "name=two words",
                                         "policy.params.discount=0.8", "sweep.grid.train.tau=[1, 2]"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.engine.deadline_s, float)
    assert cfg.name == "two words"
    assert cfg.policy.params == {"discount": 0.8}
    assert cfg.sweep.grid == {"train.tau": [1, 2]}


def test_bad_override_syntax(tmp_path):
    with pytest.raises(C.ConfigError, match="KEY=VALUE"):
        C.load(write(tmp_path, GOOD), ["train.lr"])


def test_relative_trace_dir_resolves_against_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.toml"
    p.write_text('[traces]\ndir = "../traces/x"\n')
    cfg = C.load(p)
    assert Path(cfg.traces.dir) == (tmp_path / "traces" / "x").resolve()


def test_resolved_config_round_trips(tmp_path):
    cfg = C.load(write(tmp_path, GOOD), ["policy.params.discount=0.8"])
    again = C.from_dict(C.read_toml(write(tmp_path, C.dumps(cfg))))
    assert again == cfg


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(C.ConfigError, match="not found"):
        C.load(tmp_path / "nope.toml")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load(write(tmp_path, "rounds = = 3"))


def test_shipped_configs_are_valid():
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.toml"))
    assert files, "no shipped configs"
    for f in files:
        C.load(f)


def test_trace_seed_can_follow_the_run_seed(tmp_path):
    from simfed.experiments.runner import load_population

    def population(seed: int, follows: bool):
        cfg = C.load(write(tmp_path, GOOD), [f"seed={seed}", f"traces.seed_follows_run={str(follows).lower()}"])
        pop = load_population(cfg)
        return [d.device_id for d in pop.devices], [d.compute_flops.values.tolist() + d.up_bps.values.tolist() for d in pop.devices]

    ids0, fixed0 = population(0, False)
    ids1, fixed1 = population(1, False)
    assert (ids0, fixed0) == (ids1, fixed1)  # default: one population whatever the run seed
    ids1f, follow1 = population(1, True)
    assert ids1f == ids0 and follow1 != fixed0  # same boards, another realisation of their traces
    assert population(0, True)[1] == fixed0  # run seed 0 == traces.seed 0
    path = write(tmp_path, GOOD.replace('generator = "fedspine-testbed"', 'dir = "."'))
    with pytest.raises(C.ConfigError, match=r"traces\.seed_follows_run: applies to traces\.generator only"):
        C.load(path, ["traces.seed_follows_run=true"])
