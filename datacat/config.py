"""Client configuration, resolved once: arguments > ``DATACAT_*`` environment > defaults.

Owns ``Config`` (every option of ``create_session``), the parsing of environment
values, and the default per-user spool directory. Pure apart from reading the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datacat.errors import ConfigurationError

DEFAULT_URL = "http://localhost:9090"


def default_spool_dir() -> str:
    """``$XDG_CACHE_HOME/datacat/spool`` (``~/.cache/datacat/spool``): per user."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "datacat" / "spool")


def _default_product() -> str:
    """The script's name; ``python -m package`` gives the package's; ``python -c``, ``-m``
    (while it starts), stdin (``-``) and the interactive prompt give ``"python"``."""
    arg = sys.argv[0] if sys.argv else ""
    if arg.startswith("-") or not arg:
        return "python"
    path = Path(arg)
    return (path.parent.name if path.stem == "__main__" else path.stem) or "python"


#: Every client option: name -> (its type, as ``_convert`` reads it; its default, or a function
#: that makes it). ``spool_dir=""`` disables the disk spool (memory only).
_OPTIONS: dict[str, tuple[str, Any]] = {
    "url": ("str", DEFAULT_URL),
    "product": ("str", _default_product),
    "version": ("str", "unknown"),
    "api_key": ("str | None", None),
    "disabled": ("bool", False),
    "timeout": ("float", 5.0),
    "batch_size": ("int", 500),
    "flush_interval": ("float", 0.5),
    "queue_size": ("int", 100_000),
    "spool_dir": ("str", default_spool_dir),
    "spool_max_bytes": ("int", 64 * 1024 * 1024),
    "exit_timeout": ("float", 2.0),
    "blocking": ("bool", False),
    "heartbeat_interval": ("float", 10.0),
    "hang_timeout": ("float", 60.0),
    "max_backoff": ("float", 30.0),
    "daemon": ("bool", False),
    # "thread": a sender thread in this process; "process": a child process sends
    # (``datacat.offload``), this process only hands it the items
    "sender": ("str", "thread"),
    "otel_spans": ("bool", False),  # ``@track`` opens OpenTelemetry spans (``datacat.otel``)
    "state": ("Mapping[str, Any] | None", None),
    "machine_id": ("str | None", None),
    "hostname": ("str | None", None),
}


class Config:
    """Every client option (``_OPTIONS``), immutable: ``replace`` makes a changed copy.

    A plain class, not a frozen ``@dataclass``: making that class cost every process that
    imports DataCat ~2.5 ms, and importing ``dataclasses`` (and ``inspect`` with it) another
    ~10 ms in the process sender's child, which has nothing else that needs it."""

    __slots__ = tuple(_OPTIONS)
    url: str
    product: str
    version: str
    api_key: str | None
    disabled: bool
    timeout: float
    batch_size: int
    flush_interval: float
    queue_size: int
    spool_dir: str
    spool_max_bytes: int
    exit_timeout: float
    blocking: bool
    heartbeat_interval: float
    hang_timeout: float
    max_backoff: float
    daemon: bool
    sender: str
    otel_spans: bool
    state: Mapping[str, Any] | None
    machine_id: str | None
    hostname: str | None

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"Config() got unknown option(s): {', '.join(sorted(unknown))}")
        for name, (_, default) in _OPTIONS.items():
            if name not in values:  # a function makes the default (``product``, ``spool_dir``)
                values[name] = default() if callable(default) else default
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is immutable: datacat.config.replace makes a changed copy "
                             f"(setting {name!r})")  # fmt: skip

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Config is immutable (deleting {name!r})")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _OPTIONS)

    def __reduce__(self) -> tuple[Any, ...]:  # copy, deepcopy and pickle, as a dataclass's
        return _config, (dict(zip(_OPTIONS, self._values(), strict=True)),)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if isinstance(other, Config) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{name}={getattr(self, name)!r}' for name in _OPTIONS)})"

    def destination(self) -> tuple[Any, ...]:
        """What decides which sender a session shares: where batches go (``daemon``: through
        the local daemon's pipe) and how they are batched, retried and spooled. Sessions with
        the same values share one sender thread."""
        return tuple(getattr(self, name) for name in SENDER_OPTIONS)


def _config(values: dict[str, Any]) -> Config:
    return Config(**values)


#: The options a sender (``datacat.worker.Worker``) is made with.
SENDER_OPTIONS = (
    "url",
    "api_key",
    "daemon",
    "sender",
    "spool_dir",
    "spool_max_bytes",
    "timeout",
    "batch_size",
    "flush_interval",
    "queue_size",
    "exit_timeout",
    "max_backoff",
)
#: The options the process sender's child is made with: the sender's, but how and through what
#: this process sends (``daemon``, ``sender``), which the child does not choose.
CHILD_OPTIONS = tuple(name for name in SENDER_OPTIONS if name not in ("daemon", "sender"))

#: Where a session's items are turned into batches and sent (``Config.sender``).
SENDERS = ("thread", "process")

_POSITIVE = (
    "timeout",
    "batch_size",
    "flush_interval",
    "queue_size",
    "exit_timeout",
    "heartbeat_interval",
    "hang_timeout",
    "max_backoff",
)
_ENV_SKIP = {"state"}  # a document, not an environment value


def resolve(env: Mapping[str, str] | None = None, **kwargs: Any) -> Config:
    """The effective ``Config``: keyword arguments (``None`` means "not given") over
    ``DATACAT_<NAME>`` environment variables over defaults. Raises ``ConfigurationError``
    for unknown names and unusable values."""
    unknown = set(kwargs) - set(_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown option(s): {', '.join(sorted(unknown))}")
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in _OPTIONS:
        if kwargs.get(name) is not None:
            values[name] = _convert(name, kwargs[name])
        elif name not in _ENV_SKIP and env.get(f"DATACAT_{name.upper()}", "") != "":
            values[name] = _convert(name, env[f"DATACAT_{name.upper()}"])
    config = Config(**values)
    _check(config)
    return config


def replace(config: Config, **changes: Any) -> Config:
    """``config`` with some options changed and checked."""
    unknown = set(changes) - set(_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown option(s): {', '.join(sorted(unknown))}")
    values = {name: getattr(config, name) for name in _OPTIONS}
    new = Config(**{**values, **{k: _convert(k, v) for k, v in changes.items()}})
    _check(new)
    return new


def _convert(name: str, value: Any) -> Any:
    kind = _OPTIONS[name][0]
    try:
        if "bool" in str(kind):
            return _bool(value)
        if "int" in str(kind):
            return int(value)
        if "float" in str(kind):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}: cannot use {value!r}") from None
    if name == "state":
        if not isinstance(value, Mapping):
            raise ConfigurationError("state must be a mapping")
        return dict(value)
    return str(value).rstrip("/") if name == "url" else str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _check(config: Config) -> None:
    for name in _POSITIVE:
        if not getattr(config, name) > 0:
            raise ConfigurationError(f"{name} must be positive, not {getattr(config, name)!r}")
    if config.spool_max_bytes < 0:
        raise ConfigurationError("spool_max_bytes must not be negative")
    if config.sender not in SENDERS:
        choices = " or ".join(SENDERS)
        raise ConfigurationError(f"sender must be {choices}, not {config.sender!r}")
    if not config.url.startswith(("http://", "https://")):
        raise ConfigurationError(f"url must start with http:// or https://, not {config.url!r}")
