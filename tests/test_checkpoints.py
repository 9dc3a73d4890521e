"""Checkpoints: a damaged file is refused with one line (file, what is wrong, the fix), never a traceback."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from common.pipeline import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

ROOT = Path(__file__).parents[1]
FIX = "re-run `fedser pretrain CONFIG` or point model.pretrained at a good checkpoint"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A real (small) checkpoint as ``save_checkpoint`` writes it."""
    return save_checkpoint(tmp_path / "good.pt", kind="test", weights={"w": torch.arange(1000.0)})


def test_a_good_checkpoint_loads(good: Path) -> None:
    ckpt = load_checkpoint(good)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert torch.equal(ckpt["weights"]["w"], torch.arange(1000.0))


def truncated(good: Path) -> tuple[Path, str]:
    size = good.stat().st_size // 2
    good.write_bytes(good.read_bytes()[:size])
    return good, f"truncated: a zip archive cut short at {size} bytes (no central directory)"


def random_bytes(good: Path) -> tuple[Path, str]:
    data = random.Random(0).randbytes(1000)
    good.write_bytes(data)
    return good, f"not a torch zip archive (starts with {data[:4]!r}, 1000 bytes)"


def empty(good: Path) -> tuple[Path, str]:
    good.write_bytes(b"")
    return good, "empty file (0 bytes)"


@pytest.mark.parametrize("damage", [truncated, random_bytes, empty], ids=lambda f: f.__name__)
def test_damaged_checkpoint_is_one_line_naming_file_problem_and_fix(good: Path, damage) -> None:
    path, problem = damage(good)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {problem}; {FIX}"


def test_a_sound_archive_with_a_damaged_pickle_is_refused(good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"\x80\x02}q\x00(X" if info.filename.endswith("data.pkl") else data)
    with pytest.raises(ValueError, match=r"^.*bad\.pt: damaged checkpoint \(\w+: .*\); re-run `fedser pretrain") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"a zip archive but not a torch checkpoint \(no data\.pkl\); re-run"):
        load_checkpoint(archive)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=rf"not a fedser checkpoint \(format {CHECKPOINT_FORMAT}\); re-run"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_empty_checkpoint_does_not_kill_the_process(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    code = ("import sys; from pathlib import Path; from common.pipeline import load_checkpoint\n"
            "try:\n    load_checkpoint(Path(sys.argv[1]))\nexcept ValueError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{path}: empty file (0 bytes); {FIX}\n", "")


@pytest.mark.slow  # the CLI's imports: ~20 s on two shared cores
def test_fedser_study_on_an_empty_pretrained_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # Relative paths in the file resolve against its folder, whatever the cwd.
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "empty.pt").write_bytes(b"")
    config = tmp_path / "study" / "s.toml"
    config.write_text('work_dir = "out"\nregimes = ["gan-central"]\n[model]\npretrained = "empty.pt"\n')
    env = {k: v for k, v in os.environ.items() if k != "FEDSER_DEBUG"}
    out = subprocess.run([str(Path(sys.executable).with_name("fedser")), "study", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "80"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"error: {tmp_path / 'study' / 'empty.pt'}: empty file (0 bytes); {FIX}"]
