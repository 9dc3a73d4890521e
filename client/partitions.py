"""Which utterances a training node holds: Flower Datasets' partitioners over one session.

A partition never crosses a session: every training node holds part of one session, so its
generator serves every fold its session trains in, and the held-out session never trains
(docs/federated.md, "Clients: partitions"). ``federation.partition``:

- ``session``: the session's node holds it whole (seed 002's five nodes);
- ``speaker``: one node per speaker (speakers in sorted order);
- ``dirichlet``: the session's share of ``num_clients`` nodes with label skew ``dirichlet_alpha``
  (``DirichletPartitioner``, at least ``min_partition_size`` utterances each);
- ``iid``: the session's share of ``num_clients`` nodes, a uniform random shard each (``IidPartitioner``).

Every node derives its own shard from the spec, the corpus listing and its index (no list of
utterances travels), and the study's launcher counts the nodes with the same function.

Here, not in common/, because flwr-datasets (and the HF ``datasets`` it stands on) are Flower's
side of the house; common/ stays pure ML (tests/test_architecture.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from common.config import FederationConfig
from common.corpora.base import Utterance
from common.data import labeled_scan
from common.schema import StudyConfig
from common.splits import SplitError, session_name


@dataclass(frozen=True)
class Shard:
    """Training node ``index`` (0-based) of ``session``; ``name`` is how runs and logs call it."""

    session: int
    index: int
    name: str



def partition_listing(cfg: StudyConfig) -> tuple[Utterance, ...]:
    """The utterances partitions are cut from: the labeled corpus's listing (its manifest, no
    audio read) where the simulated nodes read it (``federation.node_data_root``, else ``data.root``)."""
    if cfg.federation.node_data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": cfg.federation.node_data_root})})
    return tuple(labeled_scan(cfg).utterances)


def nodes_per_session(utterances: Sequence[Utterance], cfg: FederationConfig) -> dict[int, int]:
    """Training nodes of each session under ``cfg.partition`` (sessions in order): speakers per
    session, or ``num_clients`` spread over the sessions (the first ``num_clients % S`` one more)."""
    sessions = sorted({u.session for u in utterances if u.session is not None})
    if cfg.partition == "session":
        return dict.fromkeys(sessions, 1)
    if cfg.partition == "speaker":
        return {s: len({u.speaker for u in utterances if u.session == s}) for s in sessions}
    base, extra = divmod(cfg.num_clients, len(sessions)) if sessions else (0, 0)
    return {s: base + (i < extra) for i, s in enumerate(sessions)}


def shard_of(position: int, plan: dict[int, int]) -> tuple[int, int]:
    """(session, index) of the ``position``-th training node (0-based) when ``plan`` gives each
    session's node count: sessions in order, then indices."""
    for session, count in sorted(plan.items()):
        if position < count:
            return session, position
        position -= count
    raise SplitError(f"training node {position + sum(plan.values())}: the partition has only "
                     f"{sum(plan.values())} training nodes ({plan}); start the simulation with that many")


def shard(utterances: Sequence[Utterance], session: int, index: int, cfg: FederationConfig,
          seed: int = 0) -> tuple[Shard, list[Utterance]]:
    """Training node ``index`` of ``session``: its name and its utterances (``utterances``: the
    whole corpus listing, which fixes every session's node count; sorted by id first, so the shard
    is the same however it was read)."""
    mine = sorted((u for u in utterances if u.session == session), key=lambda u: u.id)
    count = nodes_per_session(utterances, cfg).get(session, 0)
    if not 0 <= index < count:
        raise SplitError(f"Session{session} has {count} training nodes under federation.partition = "
                         f"{cfg.partition!r}; node index {index} is not one of them")
    if cfg.partition == "session":
        return Shard(session, 0, session_name(session)), mine
    if cfg.partition == "speaker":  # a natural-id partition is a filter (NaturalIdPartitioner's, without its bar)
        speaker = sorted({u.speaker for u in mine})[index]
        return Shard(session, index, f"{session_name(session)}-{speaker}"), [u for u in mine if u.speaker == speaker]
    # Imported here: HF datasets costs seconds to import, and a deployed SuperNode starts a process
    # per message (whole-session nodes never cut shards).
    from datasets import Dataset, disable_progress_bars
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

    disable_progress_bars()  # a bar per shard on every node's stderr says nothing
    table = Dataset.from_dict({"row": list(range(len(mine))), "label": [u.label or "" for u in mine]})
    partitioner: Partitioner
    if cfg.partition == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=count, partition_by="label", alpha=cfg.dirichlet_alpha,
            min_partition_size=cfg.min_partition_size, self_balancing=False, shuffle=True, seed=seed + session)
    else:
        table = table.shuffle(seed=seed + session)  # IidPartitioner cuts contiguous shards
        partitioner = IidPartitioner(num_partitions=count)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # a redraw below min_partition_size warns each time
            warnings.simplefilter("ignore", UserWarning)
            part = partitioner.load_partition(index)
    except ValueError as exc:  # Dirichlet draws that never reach min_partition_size (10 tries)
        raise SplitError(f"Session{session}: {cfg.partition} partition into {count} nodes failed: "
                         f"{str(exc).splitlines()[0]} Lower federation.min_partition_size or "
                         "federation.num_clients") from None
    held = [mine[i] for i in part["row"]]
    return Shard(session, index, f"{session_name(session)}-n{index}"), held
