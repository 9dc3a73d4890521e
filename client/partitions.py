"""Client partitions through Flower Datasets: by session, by speaker, or Dirichlet label skew.

Here, not in common/, because flwr-datasets (and the HF ``datasets`` it stands on) are Flower's
side of the house; common/ stays pure ML (tests/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, NaturalIdPartitioner, Partitioner

from common.config import FederationConfig
from common.corpora.base import Utterance
from common.splits import SplitError


def partition(utterances: Sequence[Utterance], cfg: FederationConfig, seed: int = 0) -> dict[str, list[Utterance]]:
    """Split utterances into clients: by session (default), by speaker, or Dirichlet label skew.

    Session and speaker clients use flwr-datasets' ``NaturalIdPartitioner``; label skew its
    ``DirichletPartitioner`` over ``cfg.num_clients`` virtual clients with concentration ``alpha``.
    """
    if not utterances:
        raise SplitError("nothing to partition: the utterance list is empty")
    table = Dataset.from_dict({
        "row": list(range(len(utterances))),
        "session": [f"session{u.session}" for u in utterances],
        "speaker": [u.speaker for u in utterances],
        "label": [u.label or "" for u in utterances],
    })
    partitioner: Partitioner
    if cfg.partition == "dirichlet":
        if cfg.num_clients > len(utterances):
            raise SplitError(f"federation.num_clients={cfg.num_clients} exceeds {len(utterances)} utterances")
        partitioner = DirichletPartitioner(
            num_partitions=cfg.num_clients, partition_by="label", alpha=cfg.dirichlet_alpha,
            # Small corpora cannot guarantee 10 per client (the library default); keep it feasible.
            min_partition_size=min(10, len(utterances) // (2 * cfg.num_clients)),
            self_balancing=False, shuffle=True, seed=seed,
        )
    else:
        partitioner = NaturalIdPartitioner(partition_by=cfg.partition)
    partitioner.dataset = table
    clients: dict[str, list[Utterance]] = {}
    for pid in range(partitioner.num_partitions):
        part = partitioner.load_partition(pid)
        name = f"client{pid}" if cfg.partition == "dirichlet" else str(part[cfg.partition][0])
        clients[name] = [utterances[i] for i in part["row"]]
    return dict(sorted(clients.items()))
