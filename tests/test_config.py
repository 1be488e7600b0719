"""``datacat.config.resolve``: arguments > ``DATACAT_*`` environment > defaults."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from datacat.config import DEFAULT_URL, Config, default_spool_dir, replace, resolve
from datacat.errors import ConfigurationError


def test_defaults_without_arguments_or_environment() -> None:
    config = resolve(env={})
    assert config.url == DEFAULT_URL
    assert (config.batch_size, config.flush_interval, config.exit_timeout) == (500, 0.5, 2.0)
    assert config.disabled is False and config.blocking is False
    assert config.spool_dir == default_spool_dir()


def test_environment_over_defaults() -> None:
    env = {
        "DATACAT_URL": "http://example.test:1",
        "DATACAT_API_KEY": "k",
        "DATACAT_DISABLED": "1",
        "DATACAT_PRODUCT": "p",
        "DATACAT_VERSION": "2.0",
        "DATACAT_BATCH_SIZE": "7",
        "DATACAT_HANG_TIMEOUT": "0.5",
        "DATACAT_OTEL_SPANS": "no",
        "DATACAT_DAEMON": "true",
    }
    config = resolve(env=env)
    assert config.url == "http://example.test:1"
    assert (config.api_key, config.product, config.version) == ("k", "p", "2.0")
    assert config.disabled is True and config.daemon is True and config.otel_spans is False
    assert (config.batch_size, config.hang_timeout) == (7, 0.5)


def test_arguments_over_environment_and_none_means_not_given() -> None:
    env = {"DATACAT_URL": "http://env.test", "DATACAT_PRODUCT": "from-env"}
    config = resolve(env=env, url="http://arg.test", product=None, batch_size=3)
    assert (config.url, config.product, config.batch_size) == ("http://arg.test", "from-env", 3)


def test_empty_environment_value_is_not_given() -> None:
    assert resolve(env={"DATACAT_URL": ""}).url == DEFAULT_URL


@pytest.mark.parametrize(
    ("options", "env"),
    [
        ({"batch_size": 0}, {}),
        ({"flush_interval": -1}, {}),
        ({"url": "ftp://x"}, {}),
        ({}, {"DATACAT_TIMEOUT": "soon"}),
        ({}, {"DATACAT_DISABLED": "maybe"}),
        ({"no_such_option": 1}, {}),
        ({"state": [1, 2]}, {}),
    ],
)
def test_unusable_values_raise_configuration_error(options: dict, env: dict) -> None:
    with pytest.raises(ConfigurationError):
        resolve(env=env, **options)


def test_spool_dir_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_spool_dir() == str(tmp_path / "datacat" / "spool")


def test_a_config_is_immutable_and_copies_and_pickles_as_it_is() -> None:
    config = Config(url="http://a.test", state={"a": 1}, timeout=3.0)
    for copied in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert copied == config and copied is not config
    assert hash(Config(url="http://a.test")) == hash(Config(url="http://a.test"))
    with pytest.raises(AttributeError, match="immutable"):
        config.url = "http://b.test"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown option"):
        Config(colour="red")


def test_replace_checks_the_new_values() -> None:
    config = resolve(env={})
    assert replace(config, timeout="3").timeout == 3.0
    with pytest.raises(ConfigurationError):
        replace(config, timeout=0)


def test_state_is_copied_and_destination_groups_senders() -> None:
    state = {"a": 1}
    config = resolve(env={}, state=state)
    state["a"] = 2
    assert config.state == {"a": 1}
    assert Config(url="http://a.test").destination() != Config(url="http://b.test").destination()
    assert Config(batch_size=1).destination() != Config(batch_size=2).destination()
    assert Config(product="a").destination() == Config(product="b").destination()


@pytest.mark.parametrize(
    ("argv", "product"),
    [
        (["-c", "x"], "python"),
        (["-m"], "python"),
        (["-"], "python"),
        ([""], "python"),
        ([], "python"),
        (["/srv/tools/sync_photos.py", "--all"], "sync_photos"),
        (["/srv/lib/shop/__main__.py"], "shop"),
    ],
)
def test_the_default_product_is_the_program_name(
    argv: list[str], product: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    assert resolve(env={}).product == product


def test_python_dash_c_is_named_python() -> None:
    code = "from datacat.config import resolve; print(resolve(env={}).product)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "python\n", done.stderr
