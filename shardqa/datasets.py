"""The evaluation data shipped in the repository's ``data/`` folder: one owner for its paths.

Tests, the bench, ``shardqa eval`` and the model card name these files through this module,
so a clone in any folder finds them (never an absolute path of one machine). Where each file
comes from and its licence: ``data/README.md``.
"""

from __future__ import annotations

from pathlib import Path


def _data_folder() -> Path:
    """``data/`` beside the packages (a clone, an editable install), else ``shardqa/data``
    (a wheel: pyproject.toml installs the folder there)."""
    here = Path(__file__).resolve().parent
    beside = here.parent / "data"
    return beside if beside.is_dir() else here / "data"


DATA = _data_folder()

SQUAD_TRAIN = DATA / "squad" / "train.json"
"""SQuAD v1.1 subset, 38 articles: what the bundled reader was fine-tuned on (CC BY-SA 4.0)."""

SQUAD_DEV = DATA / "squad" / "dev.json"
"""SQuAD v1.1 subset, 5 other articles: the dev set every figure in the README is measured on."""

NATURAL_DEV = DATA / "natural" / "wiki-natural-dev.json"
"""56 natural questions over the demo corpus (the ovos-wiki summaries), SQuAD format."""


def shown(path: Path) -> str:
    """``path`` as a report records it: relative to the repository when inside it, so a
    result file names no folder of the machine it ran on."""
    root = DATA.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
