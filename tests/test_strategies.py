"""Every strategy regime for one round, and the partitions' training nodes, over the real ClientApp.

The grid here (tests/inline.py) hands each message to ``client.app.app`` in this process: the
strategies, the regimes, the nodes' handlers and their data are the real ones; only the transport
is left out (tests/test_federation.py runs the transport end to end).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.partitions import nodes_per_session, partition_listing
from common.config import SESSIONS, STRATEGY_REGIMES, ConfigError
from common.regimes import FoldOutcome
from common.schema import StudyConfig, load_config
from server.federation import Federation, WireGrid
from server.regimes import REGIMES
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.inline import InlineGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def study(tmp_path: Path, federation: str = "") -> StudyConfig:
    """The fast test study, one fold (Session1 held out), one round of one local step."""
    toml = FAST_STUDY_TABLES.replace("sessions = [1, 2]", "sessions = [1]") + (
        "[federation]\nrounds = 1\nlocal_iterations = 1\nnode_wait = 5\ntimeout = 5\n" + federation)
    return load_config(study_file(tmp_path, toml))


def run_fold(regime: str, cfg: StudyConfig, grid: InlineGrid) -> tuple[Federation, FoldOutcome]:
    fed = Federation(WireGrid(grid, None), cfg, expected=len(grid.contexts))  # type: ignore[arg-type]
    federated = REGIMES[regime](fed, cfg, None)
    [outcome] = federated.run([1], _NoStore())
    return fed, outcome


class _NoStore:
    """A generator store with nothing in it (no resume here)."""

    def load(self) -> dict[str, torch.nn.Module]:
        return {}

    def keep(self, generators: object) -> None:
        pass


def test_every_strategy_runs_a_round_and_reports_under_its_own_name(tmp_path: Path) -> None:
    cfg = study(tmp_path)
    assert not cfg.pretrained_path.exists()  # no strategy regime needs the pre-trained GAN
    grid = InlineGrid(cfg, len(SESSIONS))
    names = []
    for name in STRATEGY_REGIMES:
        start = len(grid.asked)
        fed, outcome = run_fold(name, cfg, grid)
        names.append(outcome.regime)
        assert outcome.skipped is None, (name, outcome.skipped)
        assert {"f1_macro", "ua", "wa"} <= set(outcome.metrics), name
        assert not fed.failures, (name, fed.failures)
        # The round went to Flower's strategy: the four training nodes (not Session1's) trained once.
        trained = sorted(fed.grid.who(n) for n, t in grid.asked[start:] if t == "train")
        assert trained == [f"Session{s}" for s in (2, 3, 4, 5)], name
    assert names == list(STRATEGY_REGIMES)  # e.g. fedyogi's row is fedyogi's, not fedavg's


# Each regime's Flower class and the parameters the config gives it, written out by hand (not
# from the code's own table), so that mapping a regime to another class or dropping a parameter fails.
FEDERATION = {"proximal_mu": 0.37, "server_lr": 0.05, "server_momentum": 0.7, "trim_beta": 0.3, "num_malicious": 1,
              "qffl_q": 0.4, "dp_noise": 0.08, "dp_clip": 2.5}
STRATEGIES = {
    "fedavg": ("FedAvg", {}),
    "fedprox": ("FedProx", {"proximal_mu": 0.37}),
    "fedadam": ("FedAdam", {"eta": 0.05, "eta_l": 0.002}),
    "fedadagrad": ("FedAdagrad", {"eta": 0.05, "eta_l": 0.002}),
    "fedyogi": ("FedYogi", {"eta": 0.05, "eta_l": 0.002}),
    "fedavgm": ("FedAvgM", {"server_momentum": 0.7}),
    "fedmedian": ("FedMedian", {}),
    "fedtrimmedavg": ("FedTrimmedAvg", {"beta": 0.3}),
    "krum": ("Krum", {"num_malicious_nodes": 1}),
    "multikrum": ("MultiKrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),  # sampled 4 - 1
    "bulyan": ("Bulyan", {"num_malicious_nodes": 1}),
    "qfedavg": ("QFedAvg", {"q": 0.4, "client_learning_rate": 0.002}),
    "dp-fixed": ("DifferentialPrivacyServerSideFixedClipping",
                 {"noise_multiplier": 0.08, "clipping_norm": 2.5, "num_sampled_clients": 4}),
    "dp-adaptive": ("DifferentialPrivacyServerSideAdaptiveClipping", {"clipping_norm": 2.5, "num_sampled_clients": 4}),
}


def test_each_regime_builds_its_flower_strategy_with_the_configured_parameters(tmp_path: Path) -> None:
    from flwr.serverapp import strategy as flower_strategies

    from server.regimes import _strategy

    cfg = study(tmp_path)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update=FEDERATION),
                                 "training": cfg.training.model_copy(update={"ser_lr": 0.002})})
    assert set(STRATEGIES) == set(STRATEGY_REGIMES)
    for name, (cls, params) in STRATEGIES.items():
        built = _strategy(cfg, name, 4)
        assert type(built) is getattr(flower_strategies, cls), name
        assert {k: getattr(built, k) for k in params} == pytest.approx(params), name
        inner = getattr(built, "strategy", built)  # the DP wrappers average with FedAvg
        assert type(inner).__name__ == ("FedAvg" if name.startswith("dp-") else cls)
        assert (inner.fraction_train, inner.fraction_evaluate, inner.min_train_nodes) == (1.0, 0.0, 4), name
    # dp-adaptive's noise is Flower's own calibration of ours (Andrew et al. 2021), larger than the configured.
    assert _strategy(cfg, "dp-adaptive", 4).noise_multiplier > 0.08


def test_fedprox_sends_its_mu_and_every_other_strategy_zero(tmp_path: Path) -> None:
    cfg = study(tmp_path)
    grid = InlineGrid(cfg, len(SESSIONS))
    for name, mu in (("fedprox", cfg.federation.proximal_mu), ("fedavg", 0.0)):
        start = len(grid.configs)
        run_fold(name, cfg, grid)
        sent = [c["proximal-mu"] for (_, t), c in zip(grid.asked[start:], grid.configs[start:], strict=True)
                if t == "train"]
        assert sent == [mu] * 4, name
    assert cfg.federation.proximal_mu > 0


def test_a_train_message_without_proximal_mu_is_refused_by_the_node(tmp_path: Path) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from common.trainers.registry import build_trainer

    cfg = study(tmp_path)
    grid = InlineGrid(cfg, len(SESSIONS))
    arrays = ArrayRecord(build_trainer(cfg, torch.device("cpu")).state_dict())
    config = ConfigRecord({"lo": 0.0, "hi": 1.0, "server-round": 1})
    msg = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1001, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = grid.answer(msg, grid.contexts[1001])
    assert reply.has_error() and "no 'proximal-mu'" in reply.error.reason


def test_sampling_and_stragglers_use_flowers_arguments_and_are_recorded(tmp_path: Path) -> None:
    cfg = study(tmp_path, "fraction_train = 0.5\nmin_train_nodes = 1\n")
    grid = InlineGrid(cfg, len(SESSIONS))
    fed, outcome = run_fold("fedavg", cfg, grid)
    assert len([n for n, t in grid.asked if t == "train"]) == 2  # int(4 * 0.5) of the fold's four per round
    assert outcome.skipped is None and not fed.failures

    # Session4's node answers no train message: dropped after the round's timeout, recorded by
    # name; the round aggregates the other three and the fold is still scored.
    cfg = study(tmp_path, "")
    grid = InlineGrid(cfg, len(SESSIONS), slow=[1000 + 3])
    fed = Federation(WireGrid(grid, None), cfg, expected=len(grid.contexts))  # type: ignore[arg-type]
    regime = REGIMES["fedavg"](fed, cfg, None)
    [outcome] = regime.run([1], _NoStore())
    assert len([n for n, t in grid.asked if t == "train"]) == 4
    assert fed.failures == {"Session4": "train: no reply within 5 s"}
    # Four asked, three trained: the round's figures count what arrived (benchmarks/scale.py).
    assert (regime.log.metrics["sampled_per_round"], regime.log.metrics["trained_per_round"]) == (4, 3)
    assert outcome.skipped is None and {"f1_macro", "ua", "wa"} <= set(outcome.metrics)


def test_the_straggler_drill_slows_a_stable_fraction_of_training_nodes(tmp_path: Path) -> None:
    from client.node import Node

    cfg = study(tmp_path, 'partition = "iid"\nnum_clients = 10\nslow_fraction = 0.3\nslow_seconds = 1\n')
    nodes = [Node(cfg, 1, None, f"Session1-n{i}", i) for i in range(200)]  # type: ignore[arg-type]
    slow = [n.name for n in nodes if n.slow]
    assert 40 <= len(slow) <= 80  # ~30 % of 200, chosen by a hash of name and seed
    assert slow == [n.name for n in (Node(cfg, 1, None, f"Session1-n{i}", i) for i in range(200)) if n.slow]  # type: ignore[arg-type]
    assert not Node(cfg, 1, None, "Session1").slow  # type: ignore[arg-type]  # evaluators are never slowed
    # The session partition has no shard to slow: the drill is refused there, not silently a no-op.
    with pytest.raises(ConfigError, match=r"federation.*slow_fraction slows shard nodes only.*partition"):
        study(tmp_path, "slow_fraction = 0.3\n")


@pytest.mark.parametrize("partition", ["speaker", "dirichlet", "iid"])
def test_partition_nodes_train_and_the_whole_session_nodes_evaluate(tmp_path: Path, partition: str) -> None:
    cfg = study(tmp_path, f'partition = "{partition}"\nnum_clients = 10\nmin_partition_size = 1\n')
    plan = nodes_per_session(partition_listing(cfg), cfg.federation)
    assert sum(plan.values()) == 10 and set(plan) == set(SESSIONS)
    grid = InlineGrid(cfg, len(SESSIONS) + 10)
    fed, outcome = run_fold("fedavg", cfg, grid)
    assert outcome.skipped is None
    training = [n.name for n in fed.training(1)]
    assert len(training) == 8 and all(not name.startswith("Session1") for name in training)
    assert all("-" in name for name in training)  # shards of a session, e.g. Session2-Ses02F / Session2-n1
    asked = {(fed.grid.who(n), t) for n, t in grid.asked}
    assert {name for name, t in asked if t == "train"} == set(training)
    assert {name for name, t in asked if t == "evaluate"} == {"Session1"}  # the held-out session, whole
    # Shards partition each session: the class counts of its training nodes add up to the session's.
    for s in SESSIONS:
        whole = fed.nodes[f"Session{s}"].counts
        parts = [n.counts for n in fed.nodes.values() if n.session == s and n.shard is not None]
        assert {c: sum(p[c] for p in parts) for c in whole} == whole


def test_a_corpus_split_trains_on_its_train_split_and_selects_on_its_development_split(tmp_path: Path) -> None:
    cfg = study(tmp_path, 'partition = "speaker"\n').model_copy(deep=True)
    cfg = cfg.model_copy(update={"folds": cfg.folds.model_copy(update={"scheme": "split", "sessions": (3,)})})
    grid = InlineGrid(cfg, len(SESSIONS) + 10)
    fed = Federation(WireGrid(grid, None), cfg, expected=len(grid.contexts))  # type: ignore[arg-type]
    [outcome] = REGIMES["fedavg"](fed, cfg, None).run([3], _NoStore())
    assert outcome.skipped is None and outcome.validation_score is not None
    asked = {(fed.grid.who(n), t) for n, t in grid.asked}
    assert {name for name, t in asked if t == "train"} == {"Session1-Ses01F", "Session1-Ses01M"}
    assert {name for name, t in asked if t == "evaluate"} == {"Session2", "Session3"}  # development, test
