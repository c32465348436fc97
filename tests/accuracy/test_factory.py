"""``factory.build_training``: what a run config trains, and one-line errors naming the key at fault."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from simfed import config as C
from simfed.accuracy.adapters import MODULES
from simfed.accuracy.factory import build_training, trained_lora_modules

FEDSPINE = SimpleNamespace(importance="lora-grad", aggregator="flexlora", prune_mode="iterative")
HETLORA = SimpleNamespace(importance="lora-grad", aggregator="hetlora", prune_mode="none")


def cfg(**tables) -> C.RunConfig:
    return C.from_dict({"traces": {"generator": "fedspine-testbed"}, **tables})


def test_trained_lora_modules_follow_lora_targets_only_for_the_timed_model():
    assert trained_lora_modules(cfg()) == MODULES
    assert trained_lora_modules(cfg(lora={"targets": ["v", "q", "down"]})) == ("q", "v", "down")
    # tiny trained, SmolLM2 timed: the targets describe the timed model, the trainer adapts all seven
    timed = cfg(model={"timing_preset": "smollm2-135m"}, lora={"targets": ["q", "v"]})
    assert trained_lora_modules(timed) == MODULES


def test_lora_grad_pruning_without_an_mlp_target_is_refused_before_loading():
    c = cfg(model={"preset": "smollm2-135m"}, lora={"targets": ["q", "v"]}, train={"device": "cpu"})
    with pytest.raises(C.ConfigError, match=r"^lora\.targets: \['q', 'v'\]: the method prunes with LoRA-gradient"):
        build_training(c, FEDSPINE, ["d0"], {})


def test_a_timing_only_preset_cannot_be_trained():
    with pytest.raises(C.ConfigError, match=r"^model\.preset: 'llama-7b' cannot be trained .* or set model\.path"):
        build_training(cfg(model={"preset": "llama-7b"}, train={"device": "cpu"}), HETLORA, ["d0"], {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: 'cuda' is available")
def test_an_absent_gpu_is_refused_naming_train_device():
    with pytest.raises(C.ConfigError, match=r"^train\.device: device 'cuda:0': torch .* sees no CUDA GPU"):
        build_training(cfg(train={"device": "cuda:0"}), FEDSPINE, ["d0"], {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine")
def test_workers_on_a_gpu_are_refused_naming_train_workers():
    with pytest.raises(C.ConfigError, match=r"^train\.workers: 2 worker processes are for the CPU"):
        build_training(cfg(train={"device": "cuda", "workers": 2}), FEDSPINE, ["d0"], {})


def test_config_rejects_zero_workers():
    with pytest.raises(C.ConfigError, match=r"^train\.workers: must be >= 1"):
        cfg(train={"workers": 0})
