"""The ``ctnode`` command line as users run it: a subprocess, exit codes, output."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import config
from tests.conftest import ctnode_command, subprocess_env
from tests.node_process import NodeProcess


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctnode_command(*args), env=subprocess_env(**env), capture_output=True, text=True, timeout=60
    )


def test_config_prints_effective_settings_as_toml() -> None:
    result = run("config", CTNODE_SCP__PORT="4242", CTNODE_SCP__AE_TITLE="NODE7")
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["scp"]["port"] == 4242 and printed["scp"]["ae_title"] == "NODE7"
    assert printed == json.loads(json.dumps(printed)) and "tls" in printed["scp"]
    as_json = json.loads(run("config", "--json").stdout)
    assert as_json == json.loads(json.dumps(config.as_dict(config.load(None, {}))))


def test_config_masks_the_api_token_and_the_database_password() -> None:
    result = run(
        "config",
        CTNODE_API__TOKEN="s3cret-token",
        CTNODE_DATABASE__URL="postgresql://ctnode:pa55word@db.example:5433/ctnode?sslmode=require",
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-token" not in result.stdout and "pa55word" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["api"]["token"] == "***"
    assert printed["database"]["url"] == (
        "postgresql://ctnode:***@db.example:5433/ctnode?sslmode=require"
    )
    query = run("config", "--json", CTNODE_DATABASE__URL="postgresql:///ctnode?password=pw&a=1")
    assert json.loads(query.stdout)["database"]["url"] == "postgresql:///ctnode?password=***&a=1"
    plain = run("config", "--json", CTNODE_DATABASE__URL="postgresql://ctnode@db/ctnode")
    assert json.loads(plain.stdout)["database"]["url"] == "postgresql://ctnode@db/ctnode"
    assert json.loads(plain.stdout)["api"]["token"] == ""


def test_config_error_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[assembly]\nstable_age = 'soon'\n")
    result = run("config", "--config", str(bad))
    assert result.returncode == 2
    assert "assembly.stable_age must be a number" in result.stderr


def test_status_without_data_says_so(tmp_path: Path) -> None:
    result = run("status", CTNODE_STORAGE__DATA_DIR=str(tmp_path / "empty"))
    assert result.returncode == 1 and "nothing received yet" in result.stderr


def test_echo_against_a_running_node(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "var").start()
    try:
        ok = node.ctnode("echo")
        assert ok.returncode == 0, ok.stderr
        wrong = node.ctnode("echo", "--aec", "NOTME")
        assert wrong.returncode == 1
    finally:
        node.stop()
    assert node.ctnode("echo", "--timeout", "2").returncode == 1
