"""Config: defaults, presets, experiment files, and errors that name every bad key at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.config import PRESETS, ConfigError
from common.schema import StudyConfig, load_config

EXPERIMENTS = sorted((Path(__file__).parents[1] / "simulations" / "experiments").rglob("*.toml"))


def test_defaults_are_the_tiny_demo_with_absolute_work_dir() -> None:
    cfg = load_config()
    assert cfg.preset == "tiny"
    assert cfg.model.width == PRESETS["tiny"]["model"]["width"]
    assert cfg.work_dir.is_absolute()
    assert cfg.data.classes == ("neu", "hap", "ang", "sad")
    assert cfg.data.label_map["exc"] == "hap"


def test_small_preset_is_tiny_with_the_long_averaged_stage_3() -> None:
    tiny, small = load_config().flat(), load_config(overrides={"preset": "small"}).flat()
    changed = {k: small[k] for k in small if small[k] != tiny[k]}
    # Only stage 3 differs (stages 1-2 equal: the two presets share a pre-trained checkpoint).
    assert changed == {
        "preset": "small", "training.finetune_iterations": "1800", "training.finetune_class_ramp": "900",
        "training.finetune_augment": "['shift', 'time_mask', 'freq_mask', 'gain']",
        "training.finetune_d_lr": "0.002", "training.finetune_ema": "0.997"}
    assert float(changed["training.finetune_d_lr"]) / float(tiny["training.g_lr"]) == 10  # the paper's D/G ratio


def test_paper_preset_has_the_papers_values(tmp_path: Path) -> None:
    path = tmp_path / "paper.toml"
    path.write_text('preset = "paper"\n')
    cfg = load_config(path)
    # Seed 002 Table 1 / §4.4: full width, N_z = 128, batch 32; §4.2-4.3: 128x128 patches, hop 32.
    assert (cfg.model.width, cfg.model.n_z, cfg.training.batch_size) == (1.0, 128, 32)
    assert (cfg.features.patch_frames, cfg.features.window_hop) == (128, 32)


def test_file_overrides_preset_and_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('preset = "paper"\n[model]\nwidth = 0.5\n[data]\nsubset = "improvised"\n')
    cfg = load_config(path)
    assert (cfg.model.width, cfg.model.n_z, cfg.data.subset) == (0.5, 128, "improvised")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_validates(path: Path) -> None:
    assert isinstance(load_config(path), StudyConfig)


def test_there_are_experiment_files() -> None:
    assert EXPERIMENTS, "simulations/experiments/ should hold the shipped studies"


def test_bad_file_reports_every_error_with_key_and_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[data]\nsubset = "impro"\nclasses = ["neu", "neu"]\n'
        '[features]\nkind = "mfcc"\nwindow_hop = 0\n'
        '[model]\nwidht = 0.5\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 error(s)")
    assert "data.subset: Input should be 'improvised', 'scripted' or 'all' (got 'impro')" in message
    assert "data.classes: classes must be non-empty and unique" in message
    assert "features.kind: unknown feature extractor; valid: logmel, mean_spectrum, mel6s, mfcc6s, mfcc_vad, stft (got 'mfcc')" in message
    assert "features.window_hop: Input should be greater than or equal to 1 (got 0)" in message
    assert "model.widht: unknown key; allowed here: chang, fcn, n_z, pretrained, tripathi, tu, width" in message


def test_label_map_must_target_classes(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[data.label_map]\nneu = "neutral"\n')
    with pytest.raises(ConfigError, match=r"label_map maps to \['neutral'\], which are not in classes"):
        load_config(path)


def test_toml_syntax_error_and_missing_file_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[data\nsubset = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML: .*line 1"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"preset: must be one of \['paper', 'small', 'tiny'\]"):
        load_config(None, {"preset": "huge"})


def test_config_is_frozen_and_flattens() -> None:
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.model.width = 2.0
    flat = cfg.flat()
    assert flat["model.width"] == str(cfg.model.width)
    assert flat["folds.holdout"] == "speaker"


def test_federation_settings_are_validated() -> None:
    cfg = load_config(overrides={"federation": {"failures": ["train.gan:3", "evaluate:1"]}, "regimes": ["fedprox"]})
    assert cfg.federation.failures == ("train.gan:3", "evaluate:1")
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"federation": {"failures": ["train.gan:7"]}, "regimes": ["fedsgd"]})
    assert "federation.failures.0" in str(err.value) and "regimes.0" in str(err.value)
    # Every strategy is a regime of its own: the old key says where it went.
    with pytest.raises(ConfigError, match='list it in regimes instead, e.g. regimes = \\["fedprox"\\]'):
        load_config(overrides={"federation": {"strategy": "fedprox"}})
    # Partitions: every one is accepted by the federated regimes, with Flower's sampling arguments checked.
    for partition in ("session", "speaker", "dirichlet", "iid"):
        assert load_config(overrides={"federation": {"partition": partition}}).federation.partition == partition
    with pytest.raises(ConfigError, match="federation.fraction_train"):
        load_config(overrides={"federation": {"fraction_train": 0}})


def test_config_from_run_reads_json_paths_and_the_default(tmp_path: Path) -> None:
    from common.schema import config_from_run

    cfg = load_config(overrides={"name": "sent", "work_dir": str(tmp_path / "a"), "training": {"seed": 5}})
    assert config_from_run({"study-config": cfg.model_dump_json()}) == cfg  # what fedser study sends
    path = tmp_path / "study.toml"
    path.write_text('name = "from-file"\n')
    from_file = config_from_run({"study-config": str(path), "work-dir": str(tmp_path / "b")})
    assert (from_file.name, from_file.work_dir) == ("from-file", tmp_path / "b")
    assert config_from_run({"study-config": "", "work-dir": ""}) == load_config()
    with pytest.raises(ConfigError, match="run config study-config"):
        config_from_run({"study-config": '{"training": {"seed": "x"}}'})


def test_a_config_pickles_as_it_does_into_worker_processes() -> None:
    import pickle

    cfg = load_config(overrides={"training": {"trainer": "tu-dat"}, "model": {"tu": {"lstm": 8}}})
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.model.tu.lstm == 8


# Relative paths: a config file's resolve against its folder; overrides' and defaults' against the cwd.
RELATIVE = ('work_dir = "out"\n[data]\nroot = "../corpora/IEMOCAP"\npretrain_root = "libri"\n'
            '[features]\ncache_dir = "cache"\n[model]\npretrained = "ckpt/g.pt"\n')


def test_path_fields_are_the_ones_the_rule_covers() -> None:
    from common.config import path_keys
    from common.schema import StudyConfig as FullSchema

    assert set(path_keys(FullSchema)) >= {("work_dir",), ("data", "root"), ("data", "pretrain_root"),
                                          ("features", "cache_dir"), ("model", "pretrained")}


def _study_in(tmp_path: Path, text: str, cwd: str) -> Path:
    """``text`` as tmp_path/studies/s.toml, with the current directory moved to tmp_path/``cwd``."""
    (tmp_path / "studies").mkdir()
    (tmp_path / cwd).mkdir(exist_ok=True)
    path = tmp_path / "studies" / "s.toml"
    path.write_text(text)
    os.chdir(tmp_path / cwd)
    return path


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # restored after the test
    _study_in(tmp_path, RELATIVE, "elsewhere")
    for cfg in (load_config(tmp_path / "studies" / "s.toml"), load_config(Path("../studies/s.toml"))):
        assert cfg.work_dir == tmp_path / "studies" / "out"
        assert cfg.data.root == tmp_path / "corpora" / "IEMOCAP"
        assert cfg.data.pretrain_root == tmp_path / "studies" / "libri"
        assert cfg.features.cache_dir == tmp_path / "studies" / "cache"
        assert cfg.model.pretrained == tmp_path / "studies" / "ckpt" / "g.pt"
        assert cfg.pretrained_path == tmp_path / "studies" / "ckpt" / "g.pt"


def test_absolute_and_home_paths_in_a_file_are_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "s.toml"
    path.write_text('[data]\nroot = "/data/IEMOCAP_full_release"\n[model]\npretrained = "~/g.pt"\n')
    cfg = load_config(path)
    assert (cfg.data.root, cfg.model.pretrained) == (Path("/data/IEMOCAP_full_release"), tmp_path / "home" / "g.pt")


def test_overrides_and_defaults_resolve_against_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "s.toml"
    path.write_text('name = "x"\n')  # sets no path: defaults apply
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, {"data": {"root": "corpus"}, "model": {"pretrained": "g.pt"}})
    assert cfg.work_dir == tmp_path / "outputs"  # the default work_dir stays relative to the cwd
    assert (cfg.data.root, cfg.model.pretrained) == (tmp_path / "corpus", tmp_path / "g.pt")
    assert cfg.data.pretrain_root is None and cfg.features.cache_dir is None
    # An override replaces the file's value and is not anchored at the file's folder.
    path.write_text(RELATIVE)
    assert load_config(path, {"work_dir": "w"}).work_dir == tmp_path / "w"


def test_config_from_run_anchors_a_toml_at_its_folder_and_keeps_json(tmp_path: Path, monkeypatch) -> None:
    from common.schema import config_from_run

    monkeypatch.chdir(tmp_path)  # restored after the test
    path = _study_in(tmp_path, RELATIVE, "superlink")
    from_toml = config_from_run({"study-config": str(path)})
    assert from_toml == load_config(path)
    assert from_toml.data.root == tmp_path / "corpora" / "IEMOCAP"
    # The JSON fedser study sends is already absolute: it comes back unchanged in any cwd.
    monkeypatch.chdir(tmp_path)
    assert config_from_run({"study-config": from_toml.model_dump_json()}) == from_toml
    # work-dir from the run config is an override: the cwd's.
    assert config_from_run({"study-config": str(path), "work-dir": "w"}).work_dir == tmp_path / "w"


def test_config_warnings_name_each_missing_path_and_the_fix(tmp_path: Path) -> None:
    from common.config import config_warnings

    assert config_warnings(load_config()) == []
    (tmp_path / "corpus").mkdir()
    (tmp_path / "g.pt").write_bytes(b"")
    present = {"data": {"root": str(tmp_path / "corpus"), "pretrain_root": str(tmp_path / "corpus")},
               "model": {"pretrained": str(tmp_path / "g.pt")}}
    assert config_warnings(load_config(overrides=present)) == []
    missing = {"data": {"root": str(tmp_path / "IEMOCAP_full_release"), "pretrain_root": str(tmp_path / "g.pt")},
               "model": {"pretrained": str(tmp_path / "corpus")}}
    assert config_warnings(load_config(overrides=missing)) == [
        f"data.root = {tmp_path}/IEMOCAP_full_release does not exist (set it to your copy of IEMOCAP "
        "(IEMOCAP_full_release) or remove it to use the embedded synthetic corpus)",
        f"data.pretrain_root = {tmp_path}/g.pt is a file, not a folder (set it to your copy of a LibriSpeech "
        "subset (e.g. train-clean-360) or remove it to pre-train on the embedded synthetic corpus)",
        f"model.pretrained = {tmp_path}/corpus is a folder, not a file (run `fedser pretrain CONFIG` to write "
        "it there, or remove it to use work_dir/checkpoints/pretrained.pt)",
    ]
    # RAVDESS has no embedded stand-in: the only fix is a real copy.
    ravdess = load_config(overrides={"regimes": ["real-central"], "folds": {"scheme": "kfold"},
                                     "data": {"corpus": "ravdess", "root": str(tmp_path / "RAVDESS")}})
    assert config_warnings(ravdess) == [f"data.root = {tmp_path}/RAVDESS does not exist "
                                        "(set it to your copy of RAVDESS (Actor_01 ...))"]


def test_every_corpus_kind_is_read_and_advised_from_the_one_list(tmp_path: Path) -> None:
    from common.config import _CORPUS_COPIES, CORPUS_KINDS, LABELED_CORPORA, DataConfig
    from common.corpora import read_corpus

    assert set(_CORPUS_COPIES) == set(CORPUS_KINDS) and set(LABELED_CORPORA) < set(CORPUS_KINDS)
    assert DataConfig(corpus="cremad", root=tmp_path).corpus == "cremad"  # a labeled kind is a valid data.corpus
    with pytest.raises(ValueError):
        DataConfig(corpus="librispeech", root=tmp_path)  # an unlabeled one is not
    for kind in CORPUS_KINDS:  # every kind has a reader: an empty folder is read (or refused) by it, not by name
        try:
            read_corpus(tmp_path, kind)
        except ValueError as exc:
            assert "unknown corpus kind" not in str(exc), kind
        except FileNotFoundError:
            pass


def test_a_file_store_tracking_uri_is_refused_in_one_line_unless_mlflow_allows_it(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in ("file:///tmp/mlruns", "./mlruns", "/tmp/mlruns"):
        with pytest.raises(ConfigError, match=r"tracking.uri: .*MLflow file store.*sqlite:////abs/path/mlflow.db"):
            load_config(overrides={"tracking": {"uri": uri}})
    for uri in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "postgresql://u@db/mlflow"):
        assert load_config(overrides={"tracking": {"uri": uri}}).tracking.uri == uri
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert load_config(overrides={"tracking": {"uri": "file:///tmp/mlruns"}}).tracking.uri == "file:///tmp/mlruns"
