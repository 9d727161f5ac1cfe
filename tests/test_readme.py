"""The README's commands run as written: every `metagen` command and option it shows exists, the
`make` targets exist, the settings it names are keys of params.yaml, and the pages it links to are
there. (The long commands themselves run in other tests: the whole pipeline, ingest, generate.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from components.params import flatten, load_params
from tests.conftest import PROJECT

README = (PROJECT / "README.md").read_text()
METAGEN = str(Path(sys.executable).parent / "metagen")


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(("metagen ", "make "))]


def test_every_metagen_command_and_option_in_the_readme_exists() -> None:
    used: dict[str, set[str]] = {}
    for words in _commands():
        if words[0] == "metagen":
            used.setdefault(words[1], set()).update(w.split("=")[0] for w in words[2:] if w.startswith("--"))
    assert {"run", "generate", "ingest", "history", "rollback", "approve"} <= set(used), used
    env = {**os.environ, "COLUMNS": "200"}
    for command, options in used.items():
        res = subprocess.run([METAGEN, command, "--help"], capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, (command, res.stdout + res.stderr)
        missing = [o for o in options if o not in res.stdout]
        assert not missing, f"README: `metagen {command}` has no option {missing}"


def test_make_targets_settings_and_links_in_the_readme_exist() -> None:
    makefile = (PROJECT / "Makefile").read_text()
    for words in _commands():
        if words[0] == "make":
            assert re.search(rf"(?m)^{words[1]}:", makefile), f"README: no make target {words[1]}"
    keys = set(flatten(load_params(PROJECT / "params.yaml")))
    named = {n for n in re.findall(r"`((?:data|model|meta|train|tune|eval|registry|schedule)\.[a-z_.]+)", README)
             if not n.endswith((".py", ".dvc", ".yaml", ".md"))}  # files, not settings
    assert named and named <= keys, f"README names settings params.yaml lacks: {sorted(named - keys)}"
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (PROJECT / link).exists(), f"README links to a missing {link}"
