"""One FedSpine prune+tune round of the real SmolLM2-135M on two Shakespeare roles (issue #3).

The round uses the Trainer's iterative path (arXiv 2501.02438: τ LoRA iterations, then a pruning
step, inside the round; :func:`simfed.structure.round_schedule`): 20 local iterations with a pruning
step after every τ = 10, driven by the LoRA-gradient importance EMA, up to nominal sparsity 0.15,
ranks 4 and 8, flexlora aggregation. Sparsity 0.15 removes 230 of the 1 536 MLP channels per layer
and keeps all 3 KV groups (``structure_at`` rounds 0.15 × 3 KV groups to 0; 0.2 would remove a
third of every layer's attention). The two devices are the roles ``pick_clients(2, seed=0,
min_train_chars=8000)`` draws, re-encoded with SmolLM2's tokenizer; perplexity is measured on each
role's held-out lines. Measured numbers and wall time: docs/accuracy.md ("SmolLM2-135M: one round").

The fast tests check the re-tokenisation helper without SmolLM2.
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from simfed.accuracy.data import ClientData, decode, encode, retokenize

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEQ_LEN = 64  # BPE tokens per window (about 250 characters of Shakespeare)
BATCH = 4
LOCAL_ITERS = 20
TAU = 10
SPARSITY = 0.15  # keeps all 3 KV groups: see the module docstring
LR = 1e-3
RANKS = (4, 8)


def _client(train: str, test: str) -> ClientData:
    return ClientData("play/ROLE", "play", "ROLE", encode(train), encode(test), train.count("\n") + 1, test.count("\n") + 1)


# ----------------------------------------------------------------------------- retokenize (fast)
def test_retokenize_keeps_role_and_text_and_encodes_each_speech():
    client = _client("O Romeo, Romeo!\nWherefore art thou", "Deny thy father\nand refuse thy name.")
    seen: list[str] = []

    def by_char(text: str) -> list[int]:  # an exact, invertible "tokenizer": code points
        seen.append(text)
        return [ord(c) + 1000 for c in text]

    out = retokenize(client, by_char)
    assert (out.client_id, out.play, out.role, out.n_train_lines, out.n_test_lines) == ("play/ROLE", "play", "ROLE", 2, 2)
    assert out.train.dtype == torch.int32 and out.test.dtype == torch.int32
    assert "".join(chr(int(t) - 1000) for t in out.train) == decode(client.train)
    assert "".join(chr(int(t) - 1000) for t in out.test) == decode(client.test)
    # one call per speech, the joining newline kept with the speech before it
    assert seen == ["O Romeo, Romeo!\n", "Wherefore art thou", "Deny thy father\n", "and refuse thy name."]
    assert out.n_samples(3) == len(out.train) - 3


def test_retokenize_refuses_text_it_cannot_decode_exactly():
    client = _client("fair is foul", "and foul is fair")
    client.test = torch.cat([client.test, torch.zeros(2, dtype=torch.uint8)])  # two characters outside VOCAB
    with pytest.raises(ValueError, match=r"client 'play/ROLE': its test text has 2 characters outside the fixed vocabulary"):
        retokenize(client, lambda text: [1] * len(text))


def test_retokenize_refuses_a_text_too_short_to_predict():
    client = _client("Ay.", "No.")
    with pytest.raises(ValueError, match=r"client 'play/ROLE': its train text encodes to 1 token\(s\); need >= 2"):
        retokenize(client, lambda text: [7])


def test_tokenize_clients_asks_for_no_special_tokens():
    from simfed.accuracy.smollm2 import tokenize_clients

    class FakeTokenizer:
        def __init__(self) -> None:
            self.kwargs: list[dict] = []

        def __call__(self, text: str, **kwargs):
            self.kwargs.append(kwargs)
            return {"input_ids": [len(word) for word in text.split(" ")]}

    tok = FakeTokenizer()
    out = tokenize_clients({"play/ROLE": _client("to be or\nnot", "that is the question")}, tok)
    assert out["play/ROLE"].train.tolist() == [2, 2, 3, 3] and out["play/ROLE"].test.tolist() == [4, 2, 3, 8]
    assert tok.kwargs and all(k == {"add_special_tokens": False} for k in tok.kwargs)


# ----------------------------------------------------------------------------- the real model (llm, slow)
def _smollm2_or_skip():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from simfed.accuracy import smollm2

    try:
        smollm2.gguf_path()
    except smollm2.SmolLM2Unavailable as exc:
        pytest.skip(str(exc))
    return smollm2


@pytest.mark.llm
@pytest.mark.slow
def test_one_prune_tune_round_of_smollm2_lowers_pruned_perplexity(one_thread):
    smollm2 = _smollm2_or_skip()
    from simfed.accuracy.aggregators import make_aggregator, rslora_rule
    from simfed.accuracy.data import load_shakespeare
    from simfed.accuracy.train import Trainer, TrainConfig
    from simfed.records import Arm, Plan
    from simfed.structure import sparsity_of, structure_at

    start = time.perf_counter()
    model, tokenizer, config = smollm2.load_smollm2(max_seq_len=SEQ_LEN)
    data = load_shakespeare()
    devices = data.pick_clients(2, seed=0, min_train_chars=8000)
    clients = smollm2.tokenize_clients({d: data.clients[d] for d in devices}, tokenizer)
    cfg = TrainConfig(batch_size=BATCH, seq_len=SEQ_LEN, lr=LR, seed=0)
    tr = Trainer(model, clients, cfg)
    agg = make_aggregator("flexlora", tr.shape, r_max=max(RANKS), scale_rule=rslora_rule(cfg.alpha), seed=0)

    unpruned = tr.evaluate(devices)
    plans = [
        Plan(0, d, Arm(SPARSITY, RANKS[i % 2]), 0.0, SPARSITY, local_iters=LOCAL_ITERS, tau=TAU)
        for i, d in enumerate(devices)
    ]
    factors = {pl.device_id: agg.factors_for(pl.arm.r, tr.kept(pl.device_id)) for pl in plans}
    reports = tr.run_round(plans, factors)
    agg.aggregate([r.update for r in reports])
    pruned = tr.evaluate(devices)  # the pruned base models, no adapter: "right after pruning"
    tuned = tr.evaluate(devices, delta_for=agg.delta_for)  # with the aggregated global update merged

    ppl = {d: (math.exp(unpruned[d].loss), math.exp(pruned[d].loss), math.exp(tuned[d].loss)) for d in devices}
    print(f"\nSmolLM2 round: {time.perf_counter() - start:.0f} s wall; perplexity (unpruned, pruned, tuned): {ppl}")

    expected = structure_at(tr.shape, SPARSITY)
    assert expected.kv_groups == config.n_kv_heads and expected.channels < config.d_ff  # MLP channels only
    for r in reports:
        assert tr.kept(r.device_id).structure() == expected
        assert r.sparsity_after == pytest.approx(sparsity_of(tr.shape, expected)) and r.sparsity_after > 0
    for d in devices:
        before, after_prune, after_tune = ppl[d]
        assert after_prune > before, (d, ppl[d])  # pruning costs perplexity ...
        assert after_tune < after_prune, (d, ppl[d])  # ... and one round of tuning wins some back
