"""The repository stands on its own: no tracked file names a folder of one machine, and the
evaluation data the defaults point at is in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from shardqa import datasets

ROOT = Path(__file__).resolve().parent.parent

# paths under a machine's work, root, home or Users folders, or a sibling shared data folder
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/root/|/home/[\w.-]+/|/Users/[\w.-]+/)"
                          r"|\.\./shared\b")
# the Dockerfile's paths are inside the image it builds, not on anyone's machine; this file
# names the patterns it looks for
EXEMPT = {"Dockerfile", "tests/test_repository.py"}


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    files = []
    for name in out.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or name in EXEMPT or not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" not in head:  # text, not weights or images
            files.append(path)
    return files


def test_no_tracked_file_names_a_machine_path():
    files = tracked_text_files()
    assert len(files) > 50  # the scan saw the tree (a broken git call would pass vacuously)
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "absolute machine paths:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_is_for():
    # the samples are assembled so that this file itself names no machine path
    root, up = "/", ".."
    for line in [f'SQUAD = Path("{root}work/shared/data/squad/dev.json")', f"cd {root}root/x",
                 f"see {root}home/alice/data", f"default {up}/shared/data/squad/dev.json"]:
        assert MACHINE_PATH.search(line), line
    for line in ["data/squad/dev.json", "redis://host:7000/0", "https://example.org/work/x",
                 "WORKDIR /home/shardqa"]:
        assert not MACHINE_PATH.search(line), line


def test_the_evaluation_data_is_in_the_repository():
    for path in (datasets.SQUAD_TRAIN, datasets.SQUAD_DEV, datasets.NATURAL_DEV):
        assert path.is_file(), path
        assert path.resolve().is_relative_to(ROOT)
        assert subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                              capture_output=True).returncode == 0, f"{path} is not tracked"
    assert (datasets.DATA / "README.md").is_file()
    assert "CC BY-SA 4.0" in (datasets.DATA / "squad" / "README.md").read_text()
