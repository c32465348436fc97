import pytest

from simfed.decisions.arms import ArmSpace
from simfed.decisions.methods import METHODS, build_policy, get_method
from simfed.decisions.policies import DiscountedUCB, Fixed, Oracle, SUCB
from simfed.records import Arm

SPACE = ArmSpace()
IDS = ["tx2-0", "nx-1", "agx-2"]
TYPES = {"tx2-0": "tx2", "nx-1": "xavier-nx", "agx-2": "agx-xavier"}


def test_recipes_declare_their_layers():
    assert get_method("fedspine").prune_mode == "iterative" and get_method("fedspine").aggregator == "flexlora"
    assert get_method("hetlora").prune_mode == "none" and get_method("hetlora").aggregator == "hetlora"
    ptt = get_method("prune-then-tune")
    assert (ptt.prune_mode, ptt.importance, ptt.aggregator) == ("oneshot", "taylor", "fedavg")
    with pytest.raises(ValueError, match="unknown method"):
        get_method("nope")


def test_fedspine_is_sucb_and_forwards_policy_params():
    pol = build_policy("fedspine", SPACE, IDS, TYPES, 0, {"policy": {"nu": 0.7}})
    assert isinstance(pol, SUCB) and pol.nu == 0.7


def test_hetlora_ranks_by_type_without_pruning():
    arms = build_policy("hetlora", SPACE, IDS, TYPES, 0).select(0, IDS)
    assert arms == {"tx2-0": Arm(0.0, 4), "nx-1": Arm(0.0, 8), "agx-2": Arm(0.0, 16)}
    with pytest.raises(ValueError, match="phone"):
        build_policy("hetlora", SPACE, ["a"], {"a": "phone"}, 0)
    arms = build_policy("hetlora", SPACE, ["a"], {"a": "phone"}, 0, {"ranks_by_type": {"phone": 2}}).select(0, ["a"])
    assert arms["a"] == Arm(0.0, 2)


def test_uniform_and_prune_then_tune():
    arms = build_policy("uniform", SPACE, IDS, TYPES, 0, {"s_star": 0.5, "rounds_to_target": 5, "rank": 4}).select(0, IDS)
    assert set(arms.values()) == {Arm(0.1, 4)}
    with pytest.raises(ValueError, match="s_star"):
        build_policy("uniform", SPACE, IDS, TYPES, 0)
    assert set(build_policy("prune-then-tune", SPACE, IDS, TYPES, 0).select(0, IDS).values()) == {Arm(0.0, 8)}


def test_fedmp_and_ablations_fix_one_coordinate():
    fedmp = build_policy("fedmp", SPACE, IDS, TYPES, 0, {"rank": 16})
    assert isinstance(fedmp, DiscountedUCB) and {a.r for a in fedmp.arm_list} == {16}
    fr = build_policy("fedspine-fixed-rank", SPACE, IDS, TYPES, 0, {"rank": 4})
    fp = build_policy("fedspine-fixed-ratio", SPACE, IDS, TYPES, 0, {"s_star": 0.5, "rounds_to_target": 10})
    for t in range(5):
        assert all(a.r == 4 for a in fr.select(t, IDS).values())
        assert all(a.p == pytest.approx(0.05) for a in fp.select(t, IDS).values())
        fr.update(t, [], {})
        fp.update(t, [], {})


def test_oracle_needs_traces_and_is_labelled():
    with pytest.raises(ValueError, match="traces"):
        build_policy("oracle", SPACE, IDS, TYPES, 0)
    params = Oracle._test_params()[0]
    pol = build_policy("oracle", SPACE, list(params["traces"]), {}, 0, params)
    assert pol.reads_traces
    arms = pol.select(0, list(params["traces"]))
    # the fastest device gets at least the rank of the slowest, and the slowest plays a fast arm
    assert arms["d3"].r >= arms["d0"].r
    times = {d: params["predict_completion_s"](d, a, 0.0) for d, a in arms.items()}
    t_star = max(min(params["predict_completion_s"](d, a, 0.0) for a in SPACE.grid()) for d in arms)
    assert all(t <= t_star + 1e-9 for t in times.values())


def test_every_method_builds():
    params = {"s_star": 0.5, **Oracle._test_params()[0]}
    ids = list(params["traces"])
    for name in METHODS:
        pol = build_policy(name, SPACE, ids, {d: "tx2" for d in ids}, 0, params)
        arms = pol.select(0, ids)
        assert all(SPACE.contains(a) for a in arms.values()), name
    assert isinstance(build_policy("prune-then-tune", SPACE, ids, {}, 0), Fixed)
