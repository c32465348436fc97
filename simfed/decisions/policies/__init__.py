"""Policy registry: name -> class. Adding a policy is one file plus one line in ``_CLASSES``."""

from __future__ import annotations

from typing import Any

from simfed.errors import OptionError
from simfed.options import OptionTable

from simfed.decisions.policies.base import (BACKENDS, OBSERVATION_COLUMNS, DiscretePolicy, PerDevicePolicy, Policy,
                                            derived_seed)
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


def policy_options(name: str) -> OptionTable:
    """The options a user may set for policy ``name`` (:meth:`Policy.options`).

    Raises:
        OptionError: ``name`` is not a registered policy.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise OptionError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return cls.options()


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a registered policy by name.

    Raises:
        OptionError: an unknown name, or an argument that is neither one of the policy's options nor
            one the code passes (:attr:`Policy.code_args`), or of the wrong type or range.
    """
    table = policy_options(name)
    cls = POLICIES[name]
    for key in kwargs:
        if key not in table and key not in cls.code_args:
            raise table.unknown_key(key)
    return cls(**kwargs)


__all__ = ["POLICIES", "make_policy", "policy_options", "Policy", "PerDevicePolicy", "DiscretePolicy", "derived_seed",
           "BACKENDS", "OBSERVATION_COLUMNS"] + [
    c.__name__ for c in _CLASSES
]
