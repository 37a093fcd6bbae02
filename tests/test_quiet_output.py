"""Issue 15.5: what a user sees is shardqa's own output, not libraries' warnings and bars.

The export (what ``make demo`` / ``shardqa up`` run on first use to build the bundled reader)
runs as the real ``shardqa model export`` in a subprocess, with Python's default warning
filters; the packaging metadata is checked for what made pip's build print warnings.
"""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO, run_cli

NOISE = re.compile(r"warning|deprecat|loading weights|loss_type|ForCausalLMLoss|it/s\]",
                   re.IGNORECASE)


def test_export_prints_only_shardqa_output(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny"
    proc = run_cli("model", "export", str(tiny_checkpoint), "--name", "tiny", "--out",
                   str(out), "--int8", env={"PYTHONWARNINGS": "default"}, check=True)
    assert (out / "reader-int8.pt").is_file()
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if NOISE.search(line)]
    assert noise == []
    assert proc.stderr.strip() == ""
    assert f"artifact: {out}" in proc.stdout.replace("\n", "")


def test_packaging_metadata_gives_setuptools_nothing_to_warn_about():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(meta["project"]["license"], str)  # an SPDX expression, not a table
    setuptools = meta["tool"]["setuptools"]
    # every package-data folder is itself a listed package ("absent from `packages`")
    assert set(setuptools["package-data"]) <= set(setuptools["packages"])
    package_dir = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        # a package mapped to another folder ("shardqa.data" = "data") lives there
        root = next((folder + package[len(name):] for name, folder in package_dir.items()
                     if package == name or package.startswith(name + ".")), package)
        assert (REPO / root.replace(".", "/")).is_dir(), package
