"""The settings loader: defaults, TOML, environment overrides, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import config
from config.settings import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "node.example.toml"


def test_defaults_need_no_file() -> None:
    s = config.load(None, {})
    assert (s.scp.ae_title, s.scp.port, s.scp.host) == ("CTNODE", 11112, "0.0.0.0")
    assert s.storage.data_dir == "./var"
    assert s.assembly.stable_age == 30.0


def test_example_file_documents_every_key_with_its_default() -> None:
    assert config.load(EXAMPLE, {}) == Settings()
    documented = tomllib.loads(EXAMPLE.read_text())
    assert _keys(documented) == _keys(config.as_dict(Settings()))


def _keys(tree: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[scp]\nport = 104\nae_title = "FILE"\n[assembly]\nstable_age = 5\n')
    env = {
        "CTNODE_SCP__PORT": "11113",
        "CTNODE_STORAGE__FSYNC": "false",
        "CTNODE_SCP__ALLOWED_CALLERS": '[{"ae_title": "PACS", "network": "10.0.0.0/8"}]',
        "UNRELATED": "x",
        "CTNODE_HOME": "/not/a/setting",
        "CTNODE_DESTINATIONS": '[{"name": "p", "host": "h", "port": 104, "ae_title": "PACS"}]',
    }
    s = config.load(path, env)
    assert s.scp.port == 11113
    assert s.scp.ae_title == "FILE"
    assert s.assembly.stable_age == 5.0
    assert s.storage.fsync is False
    assert s.scp.allowed_callers == (config.AllowedCaller("PACS", "10.0.0.0/8"),)
    assert s.destinations == (config.DestinationSettings("p", "h", 104, "PACS"),)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[scp]\nprot = 1\n", {}, "unknown key scp.prot"),
        ("[scp]\nport = 'x'\n", {}, "scp.port must be an integer"),
        ("[scp]\nother_storage = 'keep'\n", {}, "scp.other_storage must be one of"),
        ("", {"CTNODE_STORAGE__FSYNC": "maybe"}, "storage.fsync must be true or false"),
        ("[scp\n", {}, "not valid TOML"),
        ("", {"CTNODE_FUSION__THRESHOLD": "0"}, "fusion.threshold must be in"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path, env)


def test_settings_are_frozen() -> None:
    s = config.load(None, {})
    with pytest.raises(AttributeError):
        s.scp.port = 1  # type: ignore[misc]
