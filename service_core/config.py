"""Typed service configuration, from command-line flags and environment variables.

Each service declares its settings once, as a frozen keyword-only dataclass whose
fields are made with `setting()`. `load()` turns that dataclass into an argument
parser (`--call-timeout-s` for the field `call_timeout_s`) whose defaults come from the
environment (`COUPLING_CALL_TIMEOUT_S`) and then from the field itself, so the
precedence is: flag, then environment variable, then documented default.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from service_core.errors import ConfigError

ENV_PREFIX = "COUPLING_"

ConfigT = TypeVar("ConfigT")


def setting(default: Any, help: str) -> Any:
    """A configuration field with its default and the help text its flag shows."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or frozenset for a collection default")
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """What every service process takes, whatever its transport."""

    host: str = setting("127.0.0.1", "address the HTTP surface binds to")
    port: int = setting(8080, "port of the HTTP surface (0 picks a free one)")
    db_path: Path = setting(Path("ledger.sqlite3"), "SQLite ledger file")
    instance: str = setting("", "instance name, unique among running peers")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    shutdown_timeout_s: float = setting(
        10.0, "how long SIGTERM waits for in-flight work before giving up"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within 0..65535, got {self.port}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"log_level must be DEBUG, INFO, WARNING or ERROR, "
                f"got {self.log_level!r}"
            )
        if self.shutdown_timeout_s <= 0:
            raise ConfigError(
                f"shutdown_timeout_s must be positive, got {self.shutdown_timeout_s}"
            )

    def require_positive(self, *names: str) -> None:
        """Raise `ConfigError` unless every named numeric setting is above zero."""
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")


def load(
    kind: type[ConfigT],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    environ: dict[str, str] | None = None,
) -> ConfigT:
    """Parse flags and environment into a `kind`, exiting with a message on errors."""
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Every flag can also be set as an environment variable: "
        f"--call-timeout-s as {ENV_PREFIX}CALL_TIMEOUT_S, and so on.",
    )
    hints = get_type_hints(kind)
    parsers: dict[str, Any] = {}
    for field in dataclasses.fields(kind):  # type: ignore[arg-type]
        parse = _parser_for(hints[field.name])
        parsers[field.name] = parse
        env_name = ENV_PREFIX + field.name.upper()
        default = field.default
        if env_name in environ:
            try:
                default = parse(environ[env_name])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env_name}={environ[env_name]!r}: {exc}")
        flag = "--" + field.name.replace("_", "-")
        shown = _show(field.default)
        if hints[field.name] is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{field.metadata['help']} (default: {shown}; env {env_name})",
            )
        else:
            parser.add_argument(
                flag,
                dest=field.name,
                type=parse,
                default=default,
                metavar=field.name.upper(),
                help=f"{field.metadata['help']} (default: {shown}; env {env_name})",
            )
    namespace = parser.parse_args(argv)
    try:
        return kind(**vars(namespace))
    except ConfigError as exc:
        parser.error(str(exc))


def _parser_for(hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is tuple:
        (item, _) = get_args(hint)
        parse_item = _parser_for(item)
        return lambda text: tuple(
            parse_item(part.strip()) for part in text.split(",") if part.strip()
        )
    if origin is types.UnionType:
        return _parser_for(next(arg for arg in get_args(hint) if arg is not None))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda text: _enum_value(hint, text)
    if hint is bool:
        return _bool
    if hint in (int, float, str, Path):
        return hint
    raise TypeError(f"no flag parser for settings of type {hint!r}")


def _enum_value(kind: type[enum.Enum], text: str) -> enum.Enum:
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise argparse.ArgumentTypeError(
            f"expected one of {choices}, got {text!r}"
        ) from None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _show(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "none"
    return str(value)


def configure_logging(level: str, instance: str) -> None:
    """Set up logging once for a service process: one line per record on stderr."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {instance} %(name)s: %(message)s",
    )
