"""The Dockerfile's commands, run outside Docker (no engine on our machines): the build-time
checks (`ctnode config`, `ctnode weights list` against the repository's weights/) succeed on
this checkout, and the HEALTHCHECK command answers 0 against a running node and non-zero
when nothing listens."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO, ctnode_command, subprocess_env
from tests.node_process import NodeProcess, free_port

DOCKERFILE = (REPO / "Dockerfile").read_text()


def ctnode_steps() -> list[list[str]]:
    """Every ``ctnode ...`` command in the Dockerfile's RUN lines, as argv."""
    steps = []
    for line in re.findall(r"^RUN (.+)$", DOCKERFILE, flags=re.M):
        for part in line.split("&&"):
            words = part.split(">")[0].split()
            if words and words[0] == "ctnode":
                steps.append(words[1:])
    return steps


def healthcheck() -> list[str]:
    match = re.search(r'CMD \["ctnode", (.+)\]\nENTRYPOINT', DOCKERFILE)
    assert match, "HEALTHCHECK CMD not found"
    words: list[str] = json.loads(f"[{match.group(1)}]")
    return words


def test_build_time_checks_pass_on_this_checkout() -> None:
    steps = ctnode_steps()
    assert ["config"] in steps and ["weights", "list"] in steps
    env = subprocess_env(CTNODE_NEURAL__WEIGHTS_DIR=str(REPO / "weights"))
    for argv in steps:
        done = subprocess.run(
            ctnode_command(*argv), env=env, cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, (argv, done.stderr)


def test_weights_check_fails_the_build_on_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not the registered weights")
    (tmp_path / "manifest.toml").write_text(
        '[[models]]\nname = "m"\nversion = "1"\nfile = "model.bin"\n'
        f'sha256 = "{"0" * 64}"\nsize = 26\nlicence = "test"\nsource = ""\n'
        'analyzer = "test"\n'
    )
    env = subprocess_env(CTNODE_NEURAL__WEIGHTS_DIR=str(tmp_path))
    done = subprocess.run(
        ctnode_command("weights", "list"), env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "corrupt" in done.stdout


def test_healthcheck_command_tells_a_live_node_from_none(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "var").start()
    try:
        assert node.ctnode(*healthcheck()).returncode == 0
    finally:
        node.stop()
    dead = subprocess_env(CTNODE_SCP__HOST="127.0.0.1", CTNODE_SCP__PORT=str(free_port()))
    done = subprocess.run(ctnode_command(*healthcheck()), env=dead, capture_output=True)
    assert done.returncode != 0
