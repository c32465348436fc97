"""``simfed pretrain``: pre-train (or load from the cache) the tiny preset.

    simfed pretrain [--seed S] [--steps N] [--batch-size B] [--seq-len T] [--lr LR] [--corpus shakespeare|milton] [--threads K] [--force]

The checkpoint is ``<cache>/tiny-<hash>.pt`` (cache: ``$SIMFED_CACHE`` or ``~/.cache/simfed``); the
hash covers every setting and the seed, so a second call with the same settings only loads it.
"""

from __future__ import annotations

import json

from simfed.cli import CliError


def register(subparsers) -> None:
    from simfed.accuracy.pretrain import PretrainConfig

    d = PretrainConfig()
    p = subparsers.add_parser("pretrain", help="pre-train the tiny model (Milton by default; cached)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--corpus", default=d.corpus, choices=["shakespeare", "milton"],
                   help="pre-training text: Milton (default; a domain shift) or plays disjoint from the clients'")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help="train again even if the checkpoint is cached")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from simfed.accuracy.pretrain import PretrainConfig, checkpoint_path, load_pretrained, pretrain

    if args.threads < 0:
        raise CliError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                            min_lr=min(PretrainConfig().min_lr, args.lr), seed=args.seed, corpus=args.corpus)
    if args.force:
        _, info = pretrain(config, log=print)
        info = {**info, "cached": False, "path": str(checkpoint_path(config))}
    else:
        _, info = load_pretrained(config, log=print)
    print(json.dumps(info, indent=1))
    return 0
