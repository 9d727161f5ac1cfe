"""Real DVC in a temporary git repo with the project's dvc.yaml: ingest, repro, push, pull, lineage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.lineage import data_version
from tests.conftest import write_image, write_tree

pytestmark = pytest.mark.integration
METAGEN = str(Path(sys.executable).parent / "metagen")


def run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture
def repo(project: Path, prefect_api: str) -> Path:
    """The shared temp project (git + DVC + the project's dvc.yaml), set up for 7-image classes."""
    from components.params_file import update_params_file

    update_params_file(project / "params.yaml", {
        "data.min_images_per_class": 6, "meta.k_shot": 2, "meta.k_query": 3,
        "data.split.fractions": [0.5, 0.25, 0.25],
    })
    run(["git", "commit", "-qam", "small classes"], project)
    return project


def snapshot(root: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("data", "prepared"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = p.read_bytes()
    for name in ("data.dvc", "dvc.lock", "params.yaml"):
        if (root / name).exists():
            out[name] = (root / name).read_bytes()
    return out


def test_ingest_nested_tree_push_pull_and_lineage(repo: Path, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "src", {f"Alpha/char{i}": 7 for i in range(3)} | {f"Beta/char{i}": 7 for i in range(3)})
    res = run([METAGEN, "ingest", "--source", "image_folder", "--path", str(tree)], repo)
    assert "data version: raw=" in res.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["source"] == "image_folder"
    assert (repo / "data" / "Alpha" / "char0" / "img000.png").is_file()
    v1 = data_version(repo)
    assert v1.raw_md5 and v1.prepared_md5 and v1.git_commit
    manifest = yaml.safe_load((repo / "prepared" / "manifest.json").read_text())
    assert sum(len(s["classes"]) for s in manifest["splits"].values()) == 6
    assert "Alpha/char0" in {c for s in manifest["splits"].values() for c in s["classes"]}

    # ingest pushed to the local remote; wipe everything local, pull back the same bytes
    from dvc.repo import Repo

    assert len([p for p in (tmp_path / "dvc-remote").rglob("*") if p.is_file()]) >= 42  # 42 images + prepared
    with Repo(str(repo)) as r:
        assert r.push() == 0  # nothing left to send
    before = snapshot(repo)
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / "prepared")
    shutil.rmtree(repo / ".dvc" / "cache")
    with Repo(str(repo)) as r:
        r.pull(targets=[str(repo / "data.dvc"), f"{repo / 'dvc.yaml'}:prepare"])
    assert snapshot(repo) == before

    # a changed raw image changes both md5s
    write_image(tree / "Alpha" / "char1" / "img002.png", seed=99_999)  # new pixels
    res = run([METAGEN, "ingest"], repo)
    assert "data changed" in res.stdout
    v2 = data_version(repo)
    assert v2.raw_md5 != v1.raw_md5 and v2.prepared_md5 != v1.prepared_md5


def test_bad_input_exits_nonzero_and_changes_nothing(repo: Path, tmp_path: Path) -> None:
    good = write_tree(tmp_path / "good", {f"c{i}": 7 for i in range(4)})
    run([METAGEN, "ingest", "--source", "image_folder", "--path", str(good)], repo)
    before = snapshot(repo)

    bad = write_tree(tmp_path / "bad", {f"c{i}": 7 for i in range(4)})
    (bad / "c2" / "img003.png").write_bytes(b"not a png at all")
    res = run([METAGEN, "ingest", "--path", str(bad), "--set", "data.on_bad_image=fail"], repo, ok=False)
    assert res.returncode != 0 and "img003.png" in res.stdout + res.stderr
    assert snapshot(repo) == before

    res = run([METAGEN, "ingest", "--path", str(tmp_path / "missing")], repo, ok=False)
    assert res.returncode != 0 and "does not exist" in res.stdout
    assert snapshot(repo) == before

    res = run([METAGEN, "ingest", "--set", "meta.k_shot=10"], repo, ok=False)
    assert res.returncode != 0 and "min_images_per_class" in res.stdout
    assert snapshot(repo) == before
    assert not [p for p in repo.iterdir() if p.name.startswith((".data", ".prepared"))]
