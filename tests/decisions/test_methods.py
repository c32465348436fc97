import numpy as np
import pytest

from simfed.decisions.arms import ArmSpace
from simfed.decisions.methods import METHODS, Method, build_method, get_method
from simfed.decisions.policies import SUCB, DiscountedUCB, Fixed, Oracle
from simfed.records import Arm, PlanBatch

SPACE = ArmSpace()


def build_policy(name, space, ids, types, seed, params=None):
    """The policy a method builds (the method's parameters and, under ``policy``, its policy's options)."""
    params = dict(params or {})
    policy_params = params.pop("policy", None)
    traces = params.pop("predict_completion_s", None)
    return build_method(name, space, ids, types, seed, params, policy_params, traces=traces).policy
IDS = ["tx2-0", "nx-1", "agx-2"]
TYPES = {"tx2-0": "tx2", "nx-1": "xavier-nx", "agx-2": "agx-xavier"}


def test_methods_declare_their_layers():
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
    with pytest.raises(ValueError, match="trace predictor"):
        build_policy("oracle", SPACE, IDS, TYPES, 0)
    params = Oracle._test_params()[0]
    ids = ["d0", "d1", "d2", "d3"]
    pol = build_policy("oracle", SPACE, ids, {}, 0, params)
    assert pol.reads_traces
    arms = pol.select(0, ids)
    # the fastest device gets at least the rank of the slowest, and the slowest plays a fast arm
    assert arms["d3"].r >= arms["d0"].r
    times = {d: params["predict_completion_s"](d, a, 0.0) for d, a in arms.items()}
    t_star = max(min(params["predict_completion_s"](d, a, 0.0) for a in SPACE.grid()) for d in arms)
    assert all(t <= t_star + 1e-9 for t in times.values())



def test_the_oracle_prunes_at_the_largest_increment_even_when_pruning_costs_time_this_round():
    """A pruning step costs a little in the round that takes it; a myopic equaliser kept the slowest device
    unpruned for ever (it never reached s* and set every round's T*). Every device must take p_max."""
    speeds = {f"d{i}": 1e9 * (i + 1) for i in range(4)}

    def predict(dev: str, arm, s: float) -> float:  # p > 0 adds 0.1 % (the importance scores)
        return (1e10 * (1.0 - s) + 1e8 * arm.r) * (1.001 if arm.p > 0 else 1.0) / speeds[dev]

    pol = build_policy("oracle", SPACE, list(speeds), {}, 0, {"predict_completion_s": predict})
    arms = pol.select(0, list(speeds))
    p_max = max(a.p for a in SPACE.grid())
    assert all(a.p == p_max for a in arms.values())
    assert arms["d0"].r == min(SPACE.grid_ranks()) and arms["d3"].r > arms["d0"].r
    t_star = max(min(predict(d, a, 0.0) for a in SPACE.grid() if a.p == p_max) for d in speeds)
    assert all(predict(d, a, 0.0) <= t_star for d, a in arms.items())

def test_every_method_builds():
    params = {"s_star": 0.5, **Oracle._test_params()[0]}
    ids = ["d0", "d1", "d2", "d3"]
    for name in METHODS:
        pol = build_policy(name, SPACE, ids, {d: "tx2" for d in ids}, 0, params)
        arms = pol.select(0, ids)
        assert all(SPACE.contains(a) for a in arms.values()), name
    assert isinstance(build_policy("prune-then-tune", SPACE, ids, {}, 0), Fixed)


def test_only_a_method_that_declares_it_sees_the_traces():
    predictor = Oracle._test_params()[0]["predict_completion_s"]
    fedspine = build_method("fedspine", SPACE, IDS, TYPES, 0, traces=predictor)
    oracle = build_method("oracle", SPACE, ["d0", "d1"], {}, 0, traces=predictor)
    assert fedspine.context.traces is None and oracle.context.traces is predictor


def test_a_method_turns_arms_into_plans_by_its_schedule():
    uniform = build_method("uniform", SPACE, IDS, TYPES, 0, {"s_star": 0.5, "rounds_to_target": 2, "rank": 4})
    plans = uniform.plans(0, IDS, np.array([0.0, 0.25, 0.5]), s_star=0.5, local_iters=10, tau=5)
    assert isinstance(plans, PlanBatch) and plans.device_ids == IDS
    assert [(p.sparsity_before, p.sparsity_after, p.rank) for p in plans] == [(0.0, 0.25, 4), (0.25, 0.5, 4), (0.5, 0.5, 4)]
    hetlora = build_method("hetlora", SPACE, IDS, TYPES, 0)
    assert all(p.sparsity_after == 0.0 and p.arm.p == 0.0 for p in hetlora.plans(0, IDS, np.zeros(3), s_star=0.5,
                                                                                  local_iters=1, tau=1))
    ptt = build_method("prune-then-tune", SPACE, IDS, TYPES, 0)
    assert ptt.start_sparsity(0.5) == 0.5 and uniform.start_sparsity(0.5) == 0.0


def test_a_user_method_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "user_methods_for_test.py").write_text(
        "from simfed.decisions.methods import Method\n"
        "class Greedy(Method):\n"
        "    name = 'greedy'\n"
        "    policy_name = 'ucb1'\n"
        "    forwards_policy_params = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = get_method("user_methods_for_test:Greedy")
    assert issubclass(cls, Method) and cls.name == "greedy"
    assert get_method(f"{tmp_path / 'user_methods_for_test.py'}:Greedy").name == "greedy"
    from simfed.errors import OptionError

    with pytest.raises(OptionError, match="has no 'Nope'"):
        get_method("user_methods_for_test:Nope")
    with pytest.raises(OptionError, match="cannot import 'no_such_module'"):
        get_method("no_such_module:X")


def test_method_state_round_trips():
    """A method's state_dict restores its policy's learning exactly: same choices afterwards."""
    from simfed.records import Observation, Outcome

    def play(method, rounds):
        out = []
        for t in rounds:
            arms = method.policy.select(t, IDS)
            obs = [Observation(t, d, a, Outcome.OK, 10.0 + i, 11.0, 0.0, a.p, 0.5) for i, (d, a) in enumerate(arms.items())]
            method.learn(t, obs, method.rewards(obs))
            out.append(arms)
        return out

    a = build_method("fedspine", SPACE, IDS, TYPES, 3)
    play(a, range(5))
    state = a.state_dict()
    b = build_method("fedspine", SPACE, IDS, TYPES, 3)
    b.load_state_dict(state)
    assert play(a, range(5, 10)) == play(b, range(5, 10))
