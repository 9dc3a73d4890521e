"""``fedser demo`` end to end, as a user runs it, on one fold: the console script in a fresh process
(synthetic corpus, check, folds, pre-training, the six default regimes with the federated ones
through ``flwr run``, the report), at the fast test sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations.report import fold_rows
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.test_federation import left_behind

DEMO = 'name = "demo"\n' + FAST_STUDY_TABLES.replace("sessions = [1, 2]", "sessions = [1]") + """
[federation]
rounds = 1
local_iterations = 2
gan_rounds = 1
node_wait = 60
timeout = 300
"""


@pytest.mark.slow
def test_fedser_demo_runs_every_default_regime_and_reports(tmp_path: Path) -> None:
    from common.config import ALL_REGIMES
    from common.schema import load_config

    config = study_file(tmp_path, DEMO)
    cfg = load_config(config)
    assert cfg.regimes == ALL_REGIMES  # the demo's own default regimes, nothing chosen here
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "demo", str(config)], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("1. synthetic IEMOCAP-format corpus", "2. corpus check", "3. folds", "4. pre-training the GAN",
                 "5. study", "6. report", "demo finished in"):
        assert step in out, step
    assert f"--backend-store-uri {cfg.tracking_uri}" in out  # where the store is, and how to open it
    rows = fold_rows(cfg.tracking_uri, cfg.tracking.experiment)
    assert sorted((r["regime"], r["fold"]) for r in rows) == sorted((r, 1) for r in ALL_REGIMES)
    for regime in ALL_REGIMES:  # the report's table printed a row per regime
        assert f"| {regime} |" in out, regime
    assert left_behind(cfg.work_dir / "flower" / "home") == set()
