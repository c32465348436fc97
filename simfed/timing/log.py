"""The event log: every simulated event of a run, kept as columns and turned into records on demand.

One round's events follow from its closed :class:`~simfed.timing.round.TimingColumns` and its
:class:`~simfed.timing.round.RoundTiming` (:func:`log_round`), whichever path simulated it, so both
paths write the same log. Within a round the canonical order is (time, kind, population position), with
kinds in the order of :data:`EVENT_KINDS`; server events have position -1.
"""

from __future__ import annotations

import functools
import gc
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from simfed.records import Arm, Event, Outcome
from simfed.timing.round import OUTCOME_CODE, RoundTiming, TimingColumns

# Canonical order of events that share a time stamp: the server's one-shot pruning before the first round,
# the round's start and selection, a device's phases, the close's outcomes, then the server's own phases.
EVENT_KINDS: tuple[str, ...] = (
    "prune_end",
    "round_start",
    "select",
    "online",
    "download_end",
    "oom",
    "compute_end",
    "upload_end",
    "failed",
    "offline",
    "late",
    "straggler",
    "unavailable",
    "aggregate_end",
    "evaluate_end",
    "round_end",
)
KIND_RANK: dict[str, int] = {k: i for i, k in enumerate(EVENT_KINDS)}
_SELECT = KIND_RANK["select"]


@functools.lru_cache(maxsize=4096)
def arm_detail(arm: Arm) -> str:
    """The ``select`` event's detail (cached: a run plays few distinct arms)."""
    return f"p={arm.p:g} r={arm.r}"


class EventLog:
    """The event log as columns, one chunk per round; :class:`~simfed.records.Event` objects on demand.

    Building a quarter of a million ``Event`` objects costs as much as simulating them at 10^4
    devices; a run that writes its log to a table, or never reads it, needs none. So each round's
    events are stored as arrays and :meth:`columns` and :meth:`events` sort and expand on first use.
    """

    def __init__(self, device_ids: Sequence[str], *, sink: Callable[[pa.Table], None] | None = None,
                 sample: np.ndarray | None = None) -> None:
        """``sink``: each round's events are handed to it as an Arrow table (:meth:`table` columns) as soon as
        the round is logged, and not kept (a long or large run's log streams to disk). ``sample``: a boolean
        mask over population positions; only those devices' events are logged (server events always)."""
        self.device_ids = device_ids
        self.sink = sink
        self.sample = None if sample is None else np.asarray(sample, dtype=bool)
        self._chunks: list[tuple] = []
        self._n = 0
        self._columns: dict[str, np.ndarray] | None = None
        self._events: list[Event] | None = None
        self._ids: pa.Array | None = None

    def add_round(
        self,
        round_: int,
        select_s: float,
        selected: np.ndarray,
        arms: "Sequence[Arm] | tuple[np.ndarray, np.ndarray] | None",
        time_s: np.ndarray,
        kind: np.ndarray,
        position: np.ndarray,
        details: Mapping[tuple[int, int], str],
    ) -> None:
        """One round's events: ``selected`` positions were selected at ``select_s`` playing ``arms``
        (aligned: :class:`~simfed.records.Arm` records or a ``(p, r)`` pair of arrays; None gives empty
        details); the other events are rows of ``time_s``/``kind``/``position`` (-1 for server events);
        ``details`` maps (kind code, position) to a detail."""
        selected = np.asarray(selected, dtype=np.int64)
        time_s, kind, position = np.asarray(time_s, dtype=float), np.asarray(kind, dtype=np.int64), np.asarray(position, dtype=np.int64)
        arm_codes, arm_texts = _arm_codes(arms, len(selected))
        if self.sample is not None:
            keep_sel = self.sample[selected]
            selected = selected[keep_sel]
            if arm_codes is not None:
                arm_codes = arm_codes[keep_sel]
            keep = (position < 0) | self.sample[np.maximum(position, 0)]
            time_s, kind, position = time_s[keep], kind[keep], position[keep]
        chunk = (round_, float(select_s), selected, (arm_codes, arm_texts), time_s, kind, position, dict(details))
        self._n += len(selected) + len(time_s)
        if self.sink is not None:
            self.sink(self._table([chunk]))
            return
        self._chunks.append(chunk)
        self._columns = self._events = None

    def __len__(self) -> int:
        return self._n

    def _sorted_chunks(self, chunks=None):
        """Each round's events in canonical order, with the index of each event's detail into a list of texts."""
        for r, t_sel, selected, (arm_codes, arm_texts), t, kind, pos, details in (self._chunks if chunks is None else chunks):
            n_sel = len(selected)
            tt = np.concatenate([np.full(n_sel, t_sel), np.asarray(t, dtype=float)])
            kk = np.concatenate([np.full(n_sel, _SELECT, dtype=np.int64), np.asarray(kind, dtype=np.int64)])
            pp = np.concatenate([selected, np.asarray(pos, dtype=np.int64)])
            order = np.lexsort((pp, kk, tt))
            tt, kk, pp = tt[order], kk[order], pp[order]
            # details: texts[0] is "", then the arms' texts, then one per (kind, position) detail
            texts = [""] + list(arm_texts)
            code = np.zeros(len(tt), dtype=np.int64)
            if arm_codes is not None and n_sel:
                code[:n_sel] = arm_codes + 1
                code = code[order]
            if details:
                n_ids = len(self.device_ids) + 1
                keys = np.array([kc * n_ids + (q + 1) for kc, q in details], dtype=np.int64)
                sort = np.argsort(keys)
                keys = keys[sort]
                event_keys = kk * n_ids + (pp + 1)
                at = np.minimum(np.searchsorted(keys, event_keys), len(keys) - 1)
                hit = keys[at] == event_keys
                code[hit] = len(texts) + sort[at[hit]]
                texts.extend(details.values())
            yield r, tt, kk, pp, code, texts

    def columns(self) -> dict[str, np.ndarray]:
        """The whole log as sorted arrays: ``time_s``, ``round``, ``position`` (-1: server), ``kind``
        (a code into :data:`EVENT_KINDS`). Details are only in :meth:`events`."""
        if self._columns is None:
            parts = [(t, np.full(len(t), r, dtype=np.int64), p, k) for r, t, k, p, _, _ in self._sorted_chunks()]
            if parts:
                cols = [np.concatenate(c) for c in zip(*parts)]
            else:
                cols = [np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)]
            self._columns = dict(zip(("time_s", "round", "position", "kind"), cols))
        return self._columns

    def events(self) -> list[Event]:
        """The canonical log as :class:`~simfed.records.Event` records (built once, then cached)."""
        if self._events is None:
            ids = self.device_ids
            out: list[Event] = []
            gc_was_on = gc.isenabled()
            gc.disable()  # a quarter of a million records and no cycles: the collector's passes only cost time
            try:
                for r, t, k, p, code, texts in self._sorted_chunks():
                    for ti, ki, pi, ci in zip(t.tolist(), k.tolist(), p.tolist(), code.tolist()):
                        out.append(Event(ti, r, ids[pi] if pi >= 0 else "", EVENT_KINDS[ki], texts[ci]))
            finally:
                if gc_was_on:
                    gc.enable()
            self._events = out
        return self._events

    def table(self) -> pa.Table:
        """The whole (kept) log as an Arrow table with the columns of ``events.parquet``
        (:class:`simfed.experiments.tables.EventRow`), built column by column."""
        return self._table(self._chunks)

    def _table(self, chunks) -> pa.Table:
        if self._ids is None:
            self._ids = pa.array(list(self.device_ids) + [""], type=pa.string())  # index -1 -> ""
        n_ids = len(self.device_ids)
        kinds_text = pa.array(list(EVENT_KINDS), type=pa.string())
        parts = []
        for r, t, k, p, code, texts in self._sorted_chunks(chunks):
            parts.append(pa.table({
                "time_s": pa.array(t, type=pa.float64()),
                "round": pa.array(np.full(len(t), r, dtype=np.int64), type=pa.int64()),
                "device_id": self._ids.take(pa.array(np.where(p < 0, n_ids, p))),
                "kind": kinds_text.take(pa.array(k)),
                "detail": pa.array(texts, type=pa.string()).take(pa.array(code)),
            }))
        if not parts:
            return pa.table({"time_s": pa.array([], pa.float64()), "round": pa.array([], pa.int64()),
                             "device_id": pa.array([], pa.string()), "kind": pa.array([], pa.string()),
                             "detail": pa.array([], pa.string())})
        return pa.concat_tables(parts)


def _arm_codes(arms, n: int) -> tuple[np.ndarray | None, list[str]]:
    """The ``select`` events' details as codes into a list of distinct texts (a run plays few distinct arms)."""
    if arms is None:
        return None, []
    if isinstance(arms, tuple) and len(arms) == 2 and isinstance(arms[0], np.ndarray):
        p, r = np.asarray(arms[0], dtype=float), np.asarray(arms[1], dtype=np.int64)
        if len(p) != n or len(r) != n:
            raise ValueError(f"EventLog.add_round: arms of length {len(p)}/{len(r)} for {n} selected devices")
        pairs = np.stack([p, r.astype(float)], axis=1) if n else np.empty((0, 2))
        uniq, codes = np.unique(pairs, axis=0, return_inverse=True)
        return codes.reshape(-1).astype(np.int64), [arm_detail(Arm(float(a), int(b))) for a, b in uniq.tolist()]
    texts = [arm_detail(a) for a in arms]
    if len(texts) != n:
        raise ValueError(f"EventLog.add_round: {len(texts)} arms for {n} selected devices")
    uniq, codes = np.unique(np.array(texts, dtype=object), return_inverse=True) if n else (np.array([]), np.empty(0, np.int64))
    return np.asarray(codes, dtype=np.int64).reshape(-1), [str(x) for x in uniq.tolist()]


def sample_mask(device_ids: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray | None:
    """Which devices' events a run logs: each device independently with probability ``fraction`` (by a hash
    of its id and the seed, so the sample does not depend on the population's order); None for all."""
    import hashlib

    if fraction >= 1.0:
        return None
    cut = int(fraction * 2**64)
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{d}".encode(), digest_size=8).digest(), "little") < cut
                     for d in device_ids], dtype=bool)


def log_round(log: EventLog, ram_bytes: np.ndarray, rt: RoundTiming, cols: TimingColumns, arms,
              prune_end_s: float | None = None, failed: Mapping[str, str] | None = None) -> None:
    """One closed round's events, from its timing columns (no per-device loop): what happened by the close,
    then the server's phases. ``prune_end_s`` (round 0 only) is when the server's one-shot pruning ended."""
    t_end = cols.close_s
    pos = cols.positions
    out = cols.outcome
    times: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    where: list[np.ndarray] = []

    def server(time_s: float, kind: str) -> None:
        times.append(np.array([time_s]))
        kinds.append(np.array([KIND_RANK[kind]]))
        where.append(np.array([-1]))

    def add(mask: np.ndarray, time_s: np.ndarray | float, kind: str) -> None:
        times.append(np.broadcast_to(time_s, mask.shape)[mask])
        kinds.append(np.full(int(mask.sum()), KIND_RANK[kind]))
        where.append(pos[mask])

    if prune_end_s is not None:
        server(prune_end_s, "prune_end")
    server(rt.start_s, "round_start")
    for kind, col in (("online", cols.ready_s), ("download_end", cols.download_end_s),
                      ("compute_end", cols.compute_end_s), ("upload_end", cols.upload_end_s)):
        add(~np.isnan(col), col, kind)
    is_oom = out == OUTCOME_CODE[Outcome.OOM]
    add(is_oom, cols.end_s, "oom")
    add(out == OUTCOME_CODE[Outcome.OFFLINE], cols.end_s, "offline")
    add(out == OUTCOME_CODE[Outcome.FAILED], cols.end_s, "failed")
    for o, kind in ((Outcome.LATE, "late"), (Outcome.STRAGGLER, "straggler"), (Outcome.UNAVAILABLE, "unavailable")):
        add(out == OUTCOME_CODE[o], t_end, kind)
    if rt.aggregate_end_s > rt.close_s:
        server(rt.aggregate_end_s, "aggregate_end")
    if rt.end_s > rt.aggregate_end_s:
        server(rt.end_s, "evaluate_end")
    server(rt.end_s, "round_end")
    details = {
        (KIND_RANK["oom"], p): f"need={m:.0f}B ram={ram_bytes[p]:.0f}B"
        for p, m in zip(pos[is_oom].tolist(), cols.memory_bytes[is_oom].tolist())
    }
    if failed:
        fail = out == OUTCOME_CODE[Outcome.FAILED]
        for p in pos[fail].tolist():
            details[(KIND_RANK["failed"], p)] = failed[log.device_ids[p]]
    details[(KIND_RANK["round_end"], -1)] = f"reason={rt.reason} ok={rt.n_ok}/{rt.n_selected}"
    log.add_round(rt.round, rt.select_s, pos, arms, np.concatenate(times), np.concatenate(kinds), np.concatenate(where), details)
