import pytest

from simfed.decisions.arms import ArmSpace
from simfed.records import Arm


def test_default_grid():
    grid = ArmSpace().grid()
    assert len(grid) == 25
    assert sorted({a.p for a in grid}) == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert sorted({a.r for a in grid}) == [2, 4, 8, 16, 32]


def test_unit_square_round_trip_and_rank_rounding():
    sp = ArmSpace()
    assert sp.arm_at(0.0, 0.0) == Arm(0.0, 2) and sp.arm_at(1.0, 1.0) == Arm(0.2, 32)
    assert sp.arm_at(0.5, 0.5).r == 8  # log2 midpoint of [2, 32]
    assert sp.rank_at(0.6) == 11  # 2 ** (1 + 2.4) = 10.56 -> 11
    assert ArmSpace(rank_rounding="pow2").rank_at(0.6) == 8  # 2 ** round(3.4)
    for arm in sp.grid():
        assert sp.arm_at(*sp.to_unit(arm)) == arm


def test_bad_space_is_clear():
    with pytest.raises(ValueError, match="p_max"):
        ArmSpace(p_max=1.5)
    with pytest.raises(ValueError, match="r_min"):
        ArmSpace(r_min=8, r_max=4)
