"""simfed: a discrete-event simulator of federated prune-and-tune of language models on heterogeneous devices.

Three layers meet only in the server loop (:mod:`simfed.experiments.loop`):

- ``simfed.timing``: traces, the cost model and the SimPy engine (simulated time, never the wall clock);
- ``simfed.accuracy``: real PyTorch prune-and-tune of a small LM with LoRA, aggregation, evaluation;
- ``simfed.decisions``: policies that pick each device's (pruning ratio, LoRA rank) from what a server observes.

:mod:`simfed.records` is the vocabulary they share; :mod:`simfed.structure` maps a nominal sparsity to
the kept structure, the one rule time and accuracy both follow.
"""

__version__ = "0.1.0"


def run(*args, **kwargs):
    """Run one configuration and return its tables: :func:`simfed.api.run` (imported on first use)."""
    from simfed.api import run as _run

    return _run(*args, **kwargs)
