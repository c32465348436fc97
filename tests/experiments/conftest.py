"""Shared fixtures: a tiny timing-mode config on the generated fedspine-testbed population."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_TIMING = """
mode = "timing"
method = "fedspine"
rounds = 6
s_star = 0.5
[traces]
generator = "fedspine-testbed"
devices = 6
[train]
local_iters = 10
tau = 5
[engine]
participants = 4
overcommit = 1.5
"""


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TIMING)
    return p
