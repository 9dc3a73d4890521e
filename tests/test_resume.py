"""Resume, run ownership and the work-dir lock, on a local MLflow store with regimes that train nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from common.models.sngan import GanSpec, Generator
from common.pipeline import state_digest
from common.regimes import FoldOutcome, GeneratorStore, RegimeLog
from common.schema import load_config
from server.processes import WorkDirBusy, owner, owner_alive, work_dir_lock
from server.tracking import Tracker, config_digest, tracked
from simulations.cli import app
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.inline import run_inline
from tests.test_federation import flower_processes


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating a sqlite store costs seconds); an experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cfg(tmp_path: Path, store: str):
    return load_config(None, {"work_dir": str(tmp_path / "out"),
                              "tracking": {"uri": store, "experiment": tmp_path.name}})


class Scripted:
    """A regime whose folds score ``fold / 10`` and which raises ``fail_at`` before that fold."""

    name = "real-central"

    def __init__(self, folds: tuple[int, ...], fail_at: int | None = None,
                 error: type[BaseException] = RuntimeError) -> None:
        self.folds, self.fail_at, self.error = folds, fail_at, error
        self.log = RegimeLog()
        self.ran: list[int] = []

    def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
        for fold in (f for f in self.folds if f in todo):
            if fold == self.fail_at:
                raise self.error("killed")
            self.ran.append(fold)
            score = fold / 10
            yield FoldOutcome(regime=self.name, fold=fold, test_session=fold, validation_score=None, seconds=0.1,
                              metrics={"f1_macro": score, "ua": score, "wa": score, "confusion": [[1, 0], [0, 1]]})


def _runs(cfg) -> list:
    mlflow.set_tracking_uri(cfg.tracking_uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")


def test_a_failed_regime_resumes_with_only_its_missing_folds(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    tracker = Tracker(cfg)
    first = Scripted((1, 2, 3), fail_at=2)
    with pytest.raises(RuntimeError):
        tracked(first, tracker, cfg)
    [parent] = [r for r in _runs(cfg) if r.data.tags.get("kind") == "regime"]
    assert parent.info.status == "FAILED" and first.ran == [1]

    lines: list[str] = []
    again = Scripted((1, 2, 3))
    outcomes = tracked(again, tracker, cfg, say=lines.append)
    assert again.ran == [2, 3] and [o.fold for o in outcomes] == [2, 3]
    assert any("resuming" in line and "[1]" in line for line in lines)
    runs = _runs(cfg)
    parents = [r for r in runs if r.data.tags.get("kind") == "regime"]
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # re-opened, not a second parent
    assert parents[0].info.status == "FINISHED"
    folds = sorted(int(r.data.tags["fold"]) for r in runs if "fold" in r.data.tags and r.info.status == "FINISHED")
    assert folds == [1, 2, 3]
    # The summary covers the earlier fold too: mean of 0.1, 0.2, 0.3.
    assert parents[0].data.metrics["f1_macro_mean"] == pytest.approx(0.2)
    assert {r.data.tags["seed"] for r in runs} == {"0"} and {r.data.tags["config_hash"] for r in runs} == {
        config_digest(cfg)}

    # Everything finished: nothing runs; --fresh (resume=False) runs all again in a new parent.
    done = Scripted((1, 2, 3))
    assert tracked(done, tracker, cfg, say=lines.append) == [] and done.ran == []
    assert "already" not in lines[-1] and "finished in an earlier run" in lines[-1]
    fresh = Scripted((1, 2, 3))
    tracked(fresh, tracker, cfg, resume=False)
    assert fresh.ran == [1, 2, 3]
    assert len([r for r in _runs(cfg) if r.data.tags.get("kind") == "regime"]) == 2


def test_another_config_does_not_resume(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    tracker = Tracker(cfg)
    with pytest.raises(RuntimeError):
        tracked(Scripted((1, 2), fail_at=2), tracker, cfg)
    other = cfg.with_seed(7)
    again = Scripted((1, 2))
    tracked(again, tracker, other)
    assert again.ran == [1, 2]


def test_ctrl_c_leaves_runs_killed(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    with pytest.raises(KeyboardInterrupt):
        tracked(Scripted((1, 2), fail_at=2, error=KeyboardInterrupt), Tracker(cfg), cfg)
    statuses = {r.data.tags.get("kind", "fold"): r.info.status for r in _runs(cfg)}
    assert statuses == {"regime": "KILLED", "fold": "FINISHED"}


def test_config_digest_ignores_the_study_axes_only(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    same = cfg.model_copy(update={"name": "x", "workers": 3, "seeds": (4, 5), "regimes": ("fedavg",)})
    assert config_digest(same) == config_digest(cfg)
    assert config_digest(cfg.with_seed(1)) != config_digest(cfg)
    assert config_digest(cfg.with_trainer("chang-mtl-dat")) != config_digest(cfg)
    cfg.pretrained_path.parent.mkdir(parents=True)
    cfg.pretrained_path.write_bytes(b"one")
    with_ckpt = config_digest(cfg)
    assert with_ckpt != config_digest(same.model_copy(update={"work_dir": tmp_path / "elsewhere"}))
    time.sleep(0.01)
    cfg.pretrained_path.write_bytes(b"two")  # a new pre-training changes what the GAN regimes compute
    assert config_digest(cfg) != with_ckpt


def test_generators_kept_on_the_parent_run_load_back(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    tracker = Tracker(cfg)

    class Keeps(Scripted):
        def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
            assert store.load() == {}
            torch.manual_seed(0)
            store.keep({"Session1": Generator(GanSpec.of(cfg)).eval()})
            yield from super().run(todo, store)

    with pytest.raises(RuntimeError):
        tracked(Keeps((1, 2), fail_at=2), tracker, cfg)

    class Loads(Scripted):
        def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
            self.loaded = store.load()
            yield from super().run(todo, store)

    loads = Loads((1, 2))
    tracked(loads, tracker, cfg)
    torch.manual_seed(0)
    expected = Generator(GanSpec.of(cfg)).state_dict()
    [(name, gen)] = loads.loaded.items()
    assert name == "Session1"
    assert all(torch.equal(expected[k], v) for k, v in gen.state_dict().items())


def test_runs_of_a_dead_owner_are_reaped_and_live_ones_kept(tmp_path: Path, store: str) -> None:
    cfg = _cfg(tmp_path, store)
    dead = subprocess.run([sys.executable, "-c", "from server.processes import owner; print(owner())"],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent).stdout.strip()
    assert owner_alive(dead) is False and owner_alive(owner()) is True
    assert owner_alive("elsewhere:1:1") is None
    for tag in (dead, owner(), "elsewhere:1:1"):
        Tracker(cfg, tag)  # creates the experiment once
        mlflow.set_tracking_uri(cfg.tracking_uri)
        run = mlflow.start_run(experiment_id=Tracker(cfg, tag).experiment_id, tags={"owner": tag, "kind": tag})
        mlflow.end_run("RUNNING")  # leave it open, as a SIGKILLed process does
        assert mlflow.get_run(run.info.run_id).info.status == "RUNNING"
    assert Tracker(cfg).reap() == 1
    status = {r.data.tags["kind"]: r.info.status for r in _runs(cfg)}
    assert status == {dead: "KILLED", owner(): "RUNNING", "elsewhere:1:1": "RUNNING"}
    assert Tracker(cfg).reap(mine=True) == 1
    assert {r.data.tags["kind"]: r.info.status for r in _runs(cfg)}[owner()] == "KILLED"


def test_one_process_per_work_dir(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom server.processes import work_dir_lock\n"
         f"with work_dir_lock(Path({str(tmp_path)!r}), 'study'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkDirBusy, match=rf"in use by `fedser study` \(PID {holder.pid} "), \
                work_dir_lock(tmp_path, "study"):
            pass
        os.kill(holder.pid, signal.SIGKILL)  # a stale lock: the kernel drops a dead process's flock
        holder.wait()
        with work_dir_lock(tmp_path, "pretrain"), work_dir_lock(tmp_path, "study"):  # re-entrant in one process
            assert "fedser pretrain" in (tmp_path / ".fedser.lock").read_text()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------ end to end (slow)


def _fold_runs(uri: str, experiment: str) -> list:
    mlflow.set_tracking_uri(uri)
    return [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list") if "fold" in r.data.tags]


def _finished_folds(db: Path) -> int:
    """FINISHED fold runs in an MLflow sqlite store, read directly (milliseconds, not MLflow's seconds)."""
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=1)) as con:
        try:
            return con.execute("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                               "WHERE t.key = 'fold' AND r.status = 'FINISHED'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
            return 0


@pytest.mark.slow
@pytest.mark.usefixtures("serverapp_identity")
def test_a_sigkilled_federated_study_resumes_and_matches_a_fresh_one(tmp_path: Path, pretrained_gan: Path) -> None:
    config = study_file(tmp_path, 'name = "kill"\nregimes = ["gan-federated", "fedavg"]\n'
                        + FAST_STUDY_TABLES.replace("[audit]\n", "[audit]\nenabled = false\n")  # one node round less
                        + f'[model]\npretrained = "{pretrained_gan}"\n'
                        + '[federation]\nrounds = 2\nlocal_iterations = 4\n[tracking]\nexperiment = "kill"\n')
    uri, home = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", tmp_path / "out" / "flower" / "home"
    runner = CliRunner()
    study = subprocess.Popen([str(Path(sys.executable).parent / "fedser"), "study", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not _finished_folds(tmp_path / "out" / "mlflow.db"):  # polled in SQL: a fold can take 2 s
            assert study.poll() is None and time.monotonic() < deadline, "the study ended before its first fold"
            time.sleep(0.1)
        os.kill(study.pid, signal.SIGKILL)  # after its first finished fold
        study.wait()
        # The watchdog stops the SuperLink's tree: nothing finishes the regime unattended.
        deadline = time.monotonic() + 60
        while flower_processes(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert flower_processes(home) == set()
    finally:
        study.kill()
        study.wait()
    [first] = [r for r in _fold_runs(uri, "kill") if r.info.status == "FINISHED"]

    resumed = runner.invoke(app, ["study", str(config)])
    assert resumed.exit_code == 0, resumed.output
    assert "left RUNNING by a killed study KILLED" in resumed.output
    assert "reusing the stored generators of ['Session1', 'Session2', 'Session3', 'Session4', 'Session5']" in " ".join(resumed.output.split())
    runs = _fold_runs(uri, "kill")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted((r.data.tags["regime"], int(r.data.tags["fold"])) for r in finished) == [
        ("fedavg", 1), ("fedavg", 2), ("gan-federated", 1), ("gan-federated", 2)]  # every fold exactly once
    assert first.info.run_id in {r.info.run_id for r in finished}  # kept, not recomputed
    mlflow.set_tracking_uri(uri)
    assert not [r for r in mlflow.search_runs(experiment_names=["kill"], output_format="list")
                if r.info.status == "RUNNING"]
    [parent] = [r for r in mlflow.search_runs(experiment_names=["kill"], output_format="list")
                if r.data.tags.get("kind") == "regime" and r.data.tags["regime"] == "gan-federated"]
    assert parent.data.metrics["generators_reused"] == 5 and "skipped" in parent.data.metrics
    again = runner.invoke(app, ["study", str(config)])
    assert again.exit_code == 0 and "finished in an earlier run" in again.output and "flwr run" not in again.output

    # The same seed gives the same metrics bit for bit, whether the study was killed and resumed or
    # not: the uninterrupted study here runs on the in-process grid (tests/inline.py), so the same
    # numbers also say that Flower's transport and Ray's processes change nothing in them.
    fresh = load_config(config, {"tracking": {"experiment": "kill-fresh"}})
    run_inline(fresh, fresh.regimes, 5)
    by_fold: dict[tuple[str, str], list] = {}
    for r in sorted(_fold_runs(uri, "kill") + _fold_runs(uri, "kill-fresh"), key=lambda r: r.info.start_time):
        if r.info.status == "FINISHED":
            by_fold.setdefault((r.data.tags["regime"], r.data.tags["fold"]), []).append(r.data)
    assert len(by_fold) == 4
    for cell, (before, after) in by_fold.items():  # fedavg too: replies are summed in session order
        scores = {k: v for k, v in before.metrics.items() if k != "seconds"}
        assert scores == {k: after.metrics[k] for k in scores}, cell
        assert before.tags["model_sha256"] == after.tags["model_sha256"], cell  # the same weights, bit for bit


def test_state_digest_names_weights_by_content() -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4), "n": torch.tensor(5)}
    copy = {k: v.clone() for k, v in state.items()}
    assert state_digest(state) == state_digest(copy)
    copy["w"][1, 2] = torch.nextafter(copy["w"][1, 2], torch.tensor(1e9))  # one ulp
    assert state_digest(state) != state_digest(copy)
    assert state_digest({"w": torch.zeros(2, 2)}) != state_digest({"w": torch.zeros(4)})  # shape counts
