"""The decisions layer: policies that choose each device's (pruning increment p, LoRA rank r) every
round from what the server observes, FedSpine's S-UCB among them; the reward; the methods to compare;
and a bandit-study mode on synthetic environments. See docs/decisions.md.
"""

from simfed.decisions.arms import ArmSpace
from simfed.decisions.methods import METHODS, Method, MethodContext, build_method, get_method
from simfed.decisions.policies import POLICIES, Policy, make_policy
from simfed.decisions.reward import RewardTerms, RewardWeights, RoundContext, reward, round_reward_terms, round_rewards

__all__ = [
    "ArmSpace", "METHODS", "Method", "MethodContext", "build_method", "get_method", "POLICIES", "Policy", "make_policy",
    "RewardTerms", "RewardWeights", "RoundContext", "reward", "round_reward_terms", "round_rewards",
]
