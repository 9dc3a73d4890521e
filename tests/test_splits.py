"""Leave-one-session-out folds and client partitions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from client.partitions import nodes_per_session, shard, shard_of
from common.config import FederationConfig, FoldConfig
from common.corpora import Utterance
from common.splits import SplitError, leave_one_session_out

LABELS = ("neu", "hap", "ang", "sad")


def corpus(per_speaker: int = 8) -> list[Utterance]:
    """10 speakers in 5 sessions, labels cycling through the 4 classes."""
    out = []
    for s in range(1, 6):
        for g in "FM":
            for i in range(per_speaker):
                uid = f"Ses0{s}F_impro01_{g}{i:03d}"
                out.append(Utterance(id=uid, path=Path(f"{uid}.wav"), corpus="iemocap", speaker=f"Ses0{s}{g}",
                                     session=s, gender=g, label=LABELS[(i + s) % 4]))
    return out


def test_speaker_holdout_validates_on_one_speaker_and_tests_on_the_other() -> None:
    utts = corpus()
    folds = leave_one_session_out(utts, FoldConfig())
    assert [f.test_session for f in folds] == [1, 2, 3, 4, 5]
    for fold in folds:
        s = fold.test_session
        assert fold.train_sessions == tuple(x for x in range(1, 6) if x != s)
        assert {u.speaker for u in fold.validation} == {f"Ses0{s}F"} == {fold.validation_speaker}
        assert {u.speaker for u in fold.test} == {f"Ses0{s}M"} and fold.test_speakers == (f"Ses0{s}M",)
        # Disjoint and complete: the held-out session never leaks into training.
        ids = [u.id for u in (*fold.train, *fold.validation, *fold.test)]
        assert len(ids) == len(set(ids)) == len(utts)
        assert all(u.session != s for u in fold.train)


def test_session_holdout_and_selected_sessions() -> None:
    folds = leave_one_session_out(corpus(), FoldConfig(holdout="session", sessions=(2, 4), validation_gender="M"))
    assert [f.index for f in folds] == [2, 4]
    assert all(not f.validation and f.validation_speaker is None for f in folds)
    assert folds[0].test_speakers == ("Ses02F", "Ses02M") and len(folds[0].test) == 16


def test_missing_session_or_speaker_is_a_clear_error() -> None:
    utts = [u for u in corpus() if u.session != 3]
    with pytest.raises(SplitError, match=r"fold 3: no utterances of Session3; set folds.sessions"):
        leave_one_session_out(utts, FoldConfig())
    only_f = [u for u in corpus() if u.gender == "F"]
    with pytest.raises(SplitError, match="needs utterances of both speakers"):
        leave_one_session_out(only_f, FoldConfig())


def shards(utts: list[Utterance], cfg: FederationConfig, seed: int = 0) -> dict[str, list[Utterance]]:
    """Every training node's shard, as each node derives its own (by session and index)."""
    plan = nodes_per_session(utts, cfg)
    out = {}
    for position in range(sum(plan.values())):
        held, mine = shard(utts, *shard_of(position, plan), cfg, seed)
        out[held.name] = mine
    return out


def test_partition_by_session_and_by_speaker() -> None:
    utts = corpus()
    by_session = shards(utts, FederationConfig(partition="session"))
    assert list(by_session) == [f"Session{s}" for s in range(1, 6)]
    assert all({u.session for u in part} == {int(name[-1])} for name, part in by_session.items())
    by_speaker = shards(utts, FederationConfig(partition="speaker"))
    assert list(by_speaker) == [f"Session{s}-Ses0{s}{g}" for s in range(1, 6) for g in "FM"]
    assert all({f"Session{u.session}-{u.speaker}" for u in p} == {n} for n, p in by_speaker.items())
    with pytest.raises(SplitError, match="has only 10 training nodes"):
        shard_of(10, nodes_per_session(utts, FederationConfig(partition="speaker")))


@pytest.mark.parametrize("partition", ["dirichlet", "iid"])
def test_shards_cover_each_session_once_and_never_cross_it(partition: str) -> None:
    utts = corpus(per_speaker=40)
    cfg = FederationConfig(partition=partition, num_clients=12, dirichlet_alpha=0.1)
    assert nodes_per_session(utts, cfg) == {1: 3, 2: 3, 3: 2, 4: 2, 5: 2}  # 12 over 5: the first two get one more
    parts = shards(utts, cfg, seed=3)
    assert len(parts) == 12 and all(len({u.session for u in p}) == 1 for p in parts.values())
    ids = [u.id for p in parts.values() for u in p]
    assert sorted(ids) == sorted(u.id for u in utts)  # every utterance in exactly one shard
    shares = [max(Counter(u.label for u in p).values()) / len(p) for p in parts.values()]
    if partition == "dirichlet":  # alpha = 0.1 is strong skew: some node is dominated by one label
        assert max(shares) > 0.6 and min(len(p) for p in parts.values()) >= cfg.min_partition_size
    else:  # uniform shards of a session's 80 utterances: 80 / 3 or 80 / 2, no label dominating
        assert {len(p) for p in parts.values()} == {26, 27, 40} and max(shares) < 0.5
    # A node derives the same shard from a reordered listing (what it reads may come in any order).
    again = shards(list(reversed(utts)), cfg, seed=3)
    assert {k: [u.id for u in v] for k, v in again.items()} == {k: [u.id for u in v] for k, v in parts.items()}


def test_an_infeasible_dirichlet_split_names_the_settings_to_change() -> None:
    cfg = FederationConfig(partition="dirichlet", num_clients=50, min_partition_size=10)
    with pytest.raises(SplitError, match="Lower federation.min_partition_size or federation.num_clients"):
        shard(corpus(), 1, 0, cfg)


def test_stratified_kfold_tests_every_utterance_once_with_class_proportions() -> None:
    from common.splits import make_folds

    utts = corpus()  # 80 utterances, 20 per class
    folds = make_folds(utts, FoldConfig(scheme="kfold", k=5, seed=0))
    assert [f.index for f in folds] == [1, 2, 3, 4, 5]
    tested = [u.id for f in folds for u in f.test]
    assert sorted(tested) == sorted(u.id for u in utts)  # each utterance tested exactly once
    for f in folds:
        assert len(f.test) == 16 and len(f.train) == 64 and not f.validation  # 80/20 (seed 004 §2.1)
        assert Counter(u.label for u in f.test) == dict.fromkeys(LABELS, 4)
        assert not {u.id for u in f.test} & {u.id for u in f.train}
    assert make_folds(utts, FoldConfig(scheme="kfold", seed=1))[0].test != folds[0].test
    with pytest.raises(SplitError, match="lower folds.k"):
        make_folds(utts[:6], FoldConfig(scheme="kfold", k=5))


def test_training_speakers_are_what_a_node_derives_from_the_session_list() -> None:
    """Seed 001's speaker head under FedAvg: nodes know only the fold's training sessions."""
    from common.pipeline import iemocap_speakers, training_speakers

    for fold in leave_one_session_out(corpus(), FoldConfig()):
        assert training_speakers(fold.train) == iemocap_speakers(fold.train_sessions)
        assert len(iemocap_speakers(fold.train_sessions)) == 8  # Table 1: speaker head FC 512-64-64-8


def test_a_corpus_split_trains_validates_and_tests_on_its_own_sets() -> None:
    """MSP-Podcast's Split_Set as sessions: Train 1, Development 2, Test1 3, Test2 4."""
    from common.splits import make_folds, train_sessions, validation_session

    utts = corpus()[:64]  # sessions 1-4
    cfg = FoldConfig(scheme="split", sessions=(3, 4))
    folds = make_folds(utts, cfg)
    assert [f.test_session for f in folds] == [3, 4]
    for fold in folds:
        assert {u.session for u in fold.train} == {1} and {u.session for u in fold.validation} == {2}
        assert {u.session for u in fold.test} == {fold.test_session}
    # The federated regimes: only the train split's nodes train; the development split's node selects.
    assert train_sessions(cfg, 3, (1, 2, 3, 4, 5)) == (1,) and validation_session(cfg, 3) == 2
    assert train_sessions(FoldConfig(), 3, (1, 2, 3, 4, 5)) == (1, 2, 4, 5) and validation_session(FoldConfig(), 3) == 3
    with pytest.raises(SplitError, match="split session 5"):
        make_folds(utts, FoldConfig(scheme="split", sessions=(5,)))
