"""Policy registry: name -> class. Adding a policy is one file plus one line in ``_CLASSES``."""

from __future__ import annotations

from typing import Any

from simfed.decisions.policies.base import DiscretePolicy, PerDevicePolicy, Policy, derived_seed
from simfed.decisions.policies.discounted_ucb import DiscountedUCB
from simfed.decisions.policies.exp3 import EXP3
from simfed.decisions.policies.fixed import Fixed
from simfed.decisions.policies.linucb import LinUCB
from simfed.decisions.policies.oracle import Oracle
from simfed.decisions.policies.random_policy import RandomPolicy
from simfed.decisions.policies.sliding_window_ucb import SlidingWindowUCB
from simfed.decisions.policies.sucb import SUCB
from simfed.decisions.policies.thompson import ThompsonSampling
from simfed.decisions.policies.ucb1 import UCB1

_CLASSES: list[type[Policy]] = [
    SUCB,
    UCB1,
    DiscountedUCB,
    SlidingWindowUCB,
    EXP3,
    ThompsonSampling,
    LinUCB,
    RandomPolicy,
    Fixed,
    Oracle,
]

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in _CLASSES}


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a registered policy by name; an unknown name or argument is one clear error."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: {exc}") from None


__all__ = ["POLICIES", "make_policy", "Policy", "PerDevicePolicy", "DiscretePolicy", "derived_seed"] + [
    c.__name__ for c in _CLASSES
]
