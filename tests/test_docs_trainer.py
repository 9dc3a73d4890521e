"""The docs' "Adding a trainer" example (docs/trainers.md), followed to the letter in a copy of the repository: its
file plus its registry lines, and nothing else, give a trainer the config accepts (with its own
``[model.mlp]`` section and tiny sizes) and the contract test runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def readme_blocks() -> dict[str, str]:
    """docs/trainers.md's fenced python blocks whose first line is a ``# <path>`` comment, by path."""
    text = (ROOT / "docs" / "trainers.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", text, flags=re.S)
    return dict(blocks)


def repository_copy(target: Path) -> Path:
    """The files git knows (tracked, or new and not ignored), as a fresh clone would have them."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.mark.slow
def test_the_readme_trainer_is_one_file_and_one_registry_entry(tmp_path: Path) -> None:
    blocks = readme_blocks()
    module, lines = blocks["common/trainers/mlp.py"], blocks["common/trainers/registry.py"].splitlines()
    repo = repository_copy(tmp_path / "repo")
    (repo / "common/trainers/mlp.py").write_text(module, encoding="utf-8")
    registry = repo / "common/trainers/registry.py"
    source = registry.read_text(encoding="utf-8")
    imports = [line for line in lines if line.startswith("from ")]
    entries = [line.strip() for line in lines if line.strip().startswith('"')]
    assert imports and entries, "docs/trainers.md shows the import and the TRAINERS entry to add"
    source = source.replace("from common.trainers.tu import TuTrainer\n",
                            "from common.trainers.tu import TuTrainer\n" + "\n".join(imports) + "\n")
    source = source.replace("TRAINERS: dict[str, Entry] = {\n",
                            "TRAINERS: dict[str, Entry] = {\n" + "".join(f"    {e}\n" for e in entries))
    registry.write_text(source, encoding="utf-8")

    check = ("from common.schema import load_config\n"
             "cfg = load_config(overrides={'training': {'trainer': 'mlp'}})\n"
             "assert cfg.model.mlp.hidden == 16, cfg.model.mlp  # the section's tiny size\n"
             "cfg = load_config(overrides={'preset': 'paper', 'model': {'mlp': {'hidden': 8}}})\n"
             "assert cfg.model.mlp.hidden == 8\n")
    subprocess.run([sys.executable, "-c", check], cwd=repo, check=True)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "mlp",
                           "tests/test_trainers.py"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 5 and "failed" not in done.stdout  # every per-trainer contract test ran on it
