"""The documented switch of the DVC remote to S3, run against a temporary repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT

BIN = Path(sys.executable).parent


def test_use_s3_remote_script(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY": "example-secret"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True, env=env)
    (repo / ".dvc" / "config").write_text((PROJECT / ".dvc" / "config").read_text())
    res = subprocess.run([str(PROJECT / "infra" / "dvc" / "use-s3-remote.sh"), "s3://metagen-data/dvc",
                          "http://127.0.0.1:9000"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    config = (repo / ".dvc" / "config").read_text()
    assert "remote = s3" in config and "url = s3://metagen-data/dvc" in config
    assert "endpointurl = http://127.0.0.1:9000" in config
    assert "example-secret" not in config  # credentials only in the git-ignored local config
    assert "example-secret" in (repo / ".dvc" / "config.local").read_text()
    ignored = subprocess.run(["git", "check-ignore", ".dvc/config.local"], cwd=repo, capture_output=True, text=True)
    assert ignored.returncode == 0
    assert 'remote "local"' in config  # the old local remote stays available: `dvc push -r local`

    bad = subprocess.run([str(PROJECT / "infra" / "dvc" / "use-s3-remote.sh"), "/not/s3"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected an s3:// URL" in bad.stderr
