"""``simfed bandit``: bandit studies on synthetic reward environments (no timing, no training).

    simfed bandit study --envs lipschitz,abrupt --policies sucb,ucb1,exp3 --steps 1000 --seeds 0-4 \\
        --out regret.parquet --plot regret.png
    simfed bandit list
"""

from __future__ import annotations

import argparse
import json

from simfed.cli import CliError


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise CliError(f"--seeds: {part!r} is not an integer or a range like 0-4") from None
    if not out:
        raise CliError("--seeds: no seeds given")
    return out


def _names(text: str, flag: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise CliError(f"{flag}: no names given")
    return names


def _json_object(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise CliError(f"{flag}: must be a JSON object of name -> {{argument: value}}")
    return value


def _study(args: argparse.Namespace) -> int:
    from simfed.decisions.arms import ArmSpace
    from simfed.decisions.study import plot_regret, run_study, summarise, write_table

    from simfed.decisions.policies import policy_options

    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    space = ArmSpace(p_max=args.p_max, r_min=args.r_min, r_max=args.r_max)
    policies = _names(args.policies, "--policies")
    policy_params = _json_object(args.policy_params, "--policy-params")
    for name in policies:
        policy_options(name)  # an unknown policy is one line listing the known ones
    for name, params in policy_params.items():
        if name not in policies:
            raise CliError(f"--policy-params {name}: not one of the --policies ({', '.join(policies)})")
        policy_params[name] = policy_options(name).check(params, f"--policy-params {name}.")
    records = run_study(
        policies, _names(args.envs, "--envs"), steps=args.steps, seeds=_seeds(args.seeds),
        arm_space=space, noise=args.noise, sigma=args.sigma,
        env_params=_json_object(args.env_params, "--env-params"),
        policy_params=policy_params,
    )
    if args.out:
        write_table(records, args.out)
    if args.plot:
        plot_regret(records, args.plot)
    table = summarise(records)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def _list(args: argparse.Namespace) -> int:
    from simfed.decisions.methods import METHODS
    from simfed.decisions.policies import POLICIES
    from simfed.decisions.study import ENVIRONMENTS

    print("policies (options for policy.params / --policy-params):")
    for name, cls in POLICIES.items():
        print(f"  {name:22s} {cls.options().accepted()}")
    print("environments: " + ", ".join(ENVIRONMENTS))
    print("methods (policy; policy.params it takes; policy.method_params it reads):")
    for name, r in METHODS.items():
        print(f"  {name:22s} prune={r.prune_mode:9s} importance={r.importance:9s} aggregator={r.aggregator:8s} {r.description}")
        print(f"  {'':22s} policy={r.policy_name}; params: {r.policy_options().accepted()}; "
              f"method_params: {r.param_options().accepted()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bandit", help="bandit studies on synthetic reward environments")
    sub = parser.add_subparsers(dest="bandit_command", required=True)

    study = sub.add_parser("study", help="run policies on synthetic environments and report cumulative regret")
    study.add_argument("--policies", default="sucb,ucb1,discounted-ucb,sliding-window-ucb,exp3,thompson,linucb,random",
                       help="comma-separated registered policy names")
    study.add_argument("--envs", default="stationary,lipschitz,abrupt,adversarial", help="comma-separated environments")
    study.add_argument("--steps", type=int, default=500)
    study.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-4")
    study.add_argument("--noise", choices=["gaussian", "bernoulli"], default="gaussian")
    study.add_argument("--sigma", type=float, default=0.1, help="std of the gaussian reward noise")
    study.add_argument("--p-max", type=float, default=0.2)
    study.add_argument("--r-min", type=int, default=2)
    study.add_argument("--r-max", type=int, default=32)
    study.add_argument("--policy-params", help='JSON, e.g. \'{"sucb": {"nu": 0.5}}\'')
    study.add_argument("--env-params", help='JSON, e.g. \'{"abrupt": {"n_changes": 3}}\'')
    study.add_argument("--out", help="per-step records, .csv or .parquet")
    study.add_argument("--plot", help="cumulative-regret figure (.png)")
    study.set_defaults(func=_study)

    lst = sub.add_parser("list", help="list policies, environments and methods")
    lst.set_defaults(func=_list)
