"""Leave-one-session-out and stratified k-fold folds, and the held-out session's validation/test split.
(Client partitions need Flower Datasets: client/partitions.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.config import FoldConfig
from common.corpora.base import Utterance


@dataclass(frozen=True)
class Fold:
    """One leave-one-session-out fold; the held-out session is never trained on."""

    index: int
    test_session: int
    train: tuple[Utterance, ...]
    validation: tuple[Utterance, ...]
    test: tuple[Utterance, ...]
    validation_speaker: str | None
    test_speakers: tuple[str, ...]

    @property
    def train_sessions(self) -> tuple[int, ...]:
        """Sessions the fold trains on."""
        return tuple(sorted({u.session for u in self.train if u.session is not None}))


class SplitError(ValueError):
    """The corpus cannot be split as configured (the message says why and what to change)."""


def leave_one_session_out(utterances: Sequence[Utterance], cfg: FoldConfig) -> list[Fold]:
    """One fold per configured session (seed 002 §4.4).

    ``holdout="speaker"``: the held-out session's ``validation_gender`` speaker validates (model
    selection) and its other speaker tests, so neither is ever seen in training (seed 001 §4).
    ``holdout="session"``: the whole held-out session is the test set.
    """
    present = {u.session for u in utterances}
    if None in present:
        raise SplitError("leave-one-session-out needs sessions; this corpus has utterances without one")
    folds = []
    for session in cfg.sessions:
        if session not in present:
            raise SplitError(f"fold {session}: no utterances of Session{session}; "
                             f"set folds.sessions to a subset of {sorted(s for s in present if s is not None)}")
        train = tuple(u for u in utterances if u.session != session)
        validation, test, speaker = holdout_split([u for u in utterances if u.session == session], session, cfg)
        folds.append(Fold(
            index=session, test_session=session, train=train, validation=validation, test=test,
            validation_speaker=speaker, test_speakers=tuple(sorted({u.speaker for u in test})),
        ))
    return folds


def stratified_kfold(utterances: Sequence[Utterance], cfg: FoldConfig) -> list[Fold]:
    """``cfg.k`` folds, each testing on a different 1/k of the utterances, class proportions kept
    (seed 004 §2.1: five folds, "80-20 train-test split with a different section ... as test").
    No validation set: the paper trains a fixed schedule and reports the last model."""
    from sklearn.model_selection import StratifiedKFold

    labels = [u.label for u in utterances]
    smallest = min((labels.count(c) for c in set(labels)), default=0)
    if smallest < cfg.k:
        raise SplitError(f"folds.k = {cfg.k} but a class has only {smallest} utterances; lower folds.k")
    split = StratifiedKFold(n_splits=cfg.k, shuffle=True, random_state=cfg.seed)
    folds = []
    for index, (train, test) in enumerate(split.split(np.zeros(len(labels)), labels), start=1):
        test_set = tuple(utterances[i] for i in test)
        folds.append(Fold(index=index, test_session=index, train=tuple(utterances[i] for i in train), validation=(),
                          test=test_set, validation_speaker=None,
                          test_speakers=tuple(sorted({u.speaker for u in test_set}))))
    return folds


# folds.scheme = "split": a corpus's own partition as sessions (MSP-Podcast's Split_Set:
# Train 1, Development 2, Test1 3, Test2 4, Test3 5; common/corpora).
SPLIT_TRAIN, SPLIT_VALIDATION = 1, 2


def corpus_split(utterances: Sequence[Utterance], cfg: FoldConfig) -> list[Fold]:
    """One fold per test session of ``cfg.sessions``, each training on session 1 and validating on
    session 2 (the corpus's train and development sets: MSP-Podcast's published protocol)."""
    present = {u.session for u in utterances}
    for needed in (SPLIT_TRAIN, SPLIT_VALIDATION, *cfg.sessions):
        if needed not in present:
            raise SplitError(f"folds.scheme = \"split\" needs utterances of split session {needed}; "
                             f"the corpus has sessions {sorted(s for s in present if s is not None)}")
    train = tuple(u for u in utterances if u.session == SPLIT_TRAIN)
    validation = tuple(u for u in utterances if u.session == SPLIT_VALIDATION)
    folds = []
    for session in cfg.sessions:
        test = tuple(u for u in utterances if u.session == session)
        folds.append(Fold(index=session, test_session=session, train=train, validation=validation, test=test,
                          validation_speaker=None, test_speakers=tuple(sorted({u.speaker for u in test}))))
    return folds


def make_folds(utterances: Sequence[Utterance], cfg: FoldConfig) -> list[Fold]:
    """The study's folds: leave-one-session-out (default), stratified k-fold or the corpus's split."""
    if cfg.scheme == "kfold":
        return stratified_kfold(utterances, cfg)
    return corpus_split(utterances, cfg) if cfg.scheme == "split" else leave_one_session_out(utterances, cfg)


def train_sessions(cfg: FoldConfig, test: int | None, sessions: Sequence[int]) -> tuple[int, ...]:
    """The sessions (of ``sessions``) whose nodes train the fold that tests on ``test`` (None: any
    fold): all the others (leave-one-session-out), or the train split alone (``scheme = "split"``)."""
    return tuple(s for s in sessions if (s == SPLIT_TRAIN if cfg.scheme == "split" else s != test))


def validates(cfg: FoldConfig) -> bool:
    """Whether a fold has a validation set (what model selection needs): a held-out speaker, or
    the corpus's development split."""
    return cfg.holdout == "speaker" or cfg.scheme == "split"


def validation_session(cfg: FoldConfig, test: int) -> int:
    """The session whose node selects the fold's model: the held-out one, or the development split."""
    return SPLIT_VALIDATION if cfg.scheme == "split" else test


def holdout_split(
    held: Sequence[Utterance], session: int, cfg: FoldConfig
) -> tuple[tuple[Utterance, ...], tuple[Utterance, ...], str | None]:
    """(validation, test, validation speaker) of a held-out session: what its own node evaluates on.

    ``holdout="speaker"``: the ``validation_gender`` speaker validates, the other speaker tests;
    ``holdout="session"``: no validation, the whole session tests; ``scheme="split"``: the
    session is one split, whole, whichever role it has (the development split validates).
    """
    if cfg.scheme == "split":
        return tuple(held), tuple(held), None
    if cfg.holdout == "session":
        return (), tuple(held), None
    speaker = f"Ses{session:02d}{cfg.validation_gender}"
    validation = tuple(u for u in held if u.speaker == speaker)
    test = tuple(u for u in held if u.speaker != speaker)
    if not validation or not test:
        raise SplitError(f"fold {session}: Session{session} needs utterances of both speakers "
                         "for holdout='speaker'; use folds.holdout = \"session\"")
    return validation, test, speaker

def session_name(session: int) -> str:
    """The name of the node that holds a whole session (and of its generator)."""
    return f"Session{session}"
