"""Config loading: YAML + --set overrides, unknown keys and bad values named before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from srtn.cli import main
from srtn.config.base import apply_overrides, flatten, load_config, parse_override
from srtn.config.tile import TileConfig
from srtn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("tiles.size=512", ["tiles", "size"], 512),
        ("optim.lr=1e-3", ["optim", "lr"], 1e-3),
        ("lr.scales=[2, 4]", ["lr", "scales"], [2, 4]),
        ("input=s3://bucket/slides", ["input"], "s3://bucket/slides"),
        ("strict=true", ["strict"], True),
        ("split.salt=", ["split", "salt"], ""),
    ],
)
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("tiles.size")


def test_override_into_scalar_names_the_key():
    with pytest.raises(ConfigError) as err:
        apply_overrides({"tiles": 5}, ["tiles.size=3"])
    assert err.value.key == "tiles"


def test_override_indexes_a_list_item():
    data = {"datasets": [{"name": "a", "shards": "x"}, {"name": "b", "shards": "y"}]}
    apply_overrides(data, ["datasets.1.shards=/data/b", "datasets.-2.name=first"])
    assert data == {"datasets": [{"name": "first", "shards": "x"}, {"name": "b", "shards": "/data/b"}]}
    with pytest.raises(ConfigError, match="index 0..1") as err:
        apply_overrides(data, ["datasets.2.shards=z"])
    assert err.value.key == "datasets.2"
    with pytest.raises(ConfigError, match="index"):
        apply_overrides(data, ["datasets.name=z"])


@pytest.mark.parametrize("name", ["tcga_kirc.yaml", "tcga_kirc_mini.yaml"])
def test_shipped_data_configs_load(name):
    cfg = load_config(TileConfig, ROOT / "configs" / "data" / name)
    assert cfg.tiles.size == 256 and cfg.lr.scales == [4, 8]


def test_overrides_apply_and_validate():
    cfg = load_config(
        TileConfig, ROOT / "configs/data/tcga_kirc.yaml", ["tiles.size=512", "max_tiles_per_slide=7", "input=[a, b]"]
    )
    assert cfg.tiles.size == 512 and cfg.max_tiles_per_slide == 7 and cfg.input == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("tiles.sise=512", "tiles.sise", "unknown key"),
        ("bogus=1", "bogus", "unknown key"),
        ("tiles.size=-4", "tiles.size", "greater than or equal"),
        ("lr.scales=[5]", "lr.scales", "scale 5 not supported"),
        ("lr.method=nearest", "lr.method", "lanczos"),
        ("tiles.size=100", "", "not divisible"),
    ],
)
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(TileConfig, ROOT / "configs/data/tcga_kirc.yaml", [override])
    assert words in str(err.value)
    if key:
        assert key in str(err.value)


def test_missing_required_key():
    with pytest.raises(ConfigError, match="output: required key is missing"):
        load_config(TileConfig, data={"input": "x"})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TileConfig, tmp_path / "nope.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_cli_bad_key_fails_before_ray():
    """In a fresh interpreter: exit 2, the key named, and Ray never even imported."""
    import subprocess
    import sys

    code = (
        "import sys; from srtn.cli import main; "
        f"rc = main(['tile', '--config', {str(ROOT / 'configs/data/tcga_kirc.yaml')!r}, '--set', 'tiles.sise=3']); "
        "print(rc, 'ray' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"]
    assert "tiles.sise: unknown key" in proc.stderr


def test_cli_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("tile", "breakhis", "train", "evaluate", "tune", "predict", "synth", "demo"):
        assert command in out
