"""The oracle: it READS THE DEVICE TRACES (``reads_traces``), which no real server can, and equalises predicted
completion times at the best quality (:mod:`simfed.decisions.policies.oracle`). A bound, labelled as such."""

from __future__ import annotations

from simfed.decisions.methods.base import Method, MethodContext
from simfed.decisions.policies import Policy, make_policy


class OracleMethod(Method):
    name = "oracle"
    description = "reads the traces; equalises predicted completion times"
    policy_name = "oracle"
    forwards_policy_params = True
    reads_traces = True

    def build_policy(self, ctx: MethodContext) -> Policy:
        if ctx.traces is None:
            raise ValueError("oracle: needs the trace predictor (a run gives it to methods that declare reads_traces)")
        return make_policy("oracle", arm_space=ctx.arm_space, seed=ctx.seed, predict_completion_s=ctx.traces,
                           **ctx.policy_params)
