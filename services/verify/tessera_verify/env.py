"""Reading typed settings from the environment: the reader and the rules every
tessera service and the verify configuration share.

Every secret can also come from a file named by ``<NAME>_FILE`` (Docker and
Kubernetes secrets). :class:`EnvReader` records every problem instead of
stopping at the first, so an operator fixes a configuration in one pass.
:class:`RecordedEnviron` remembers which names were looked up, so a service can
name the ``TESSERA_*`` variables it was given and never read (a misspelling).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from .client_ip import Network
from .verification_keys import SUPPORTED_ALGORITHMS

Environment = Literal["development", "production"]
PLACEHOLDER_MARK = "dev-only-insecure"
DEV_SECRET = PLACEHOLDER_MARK + "-change-me-0123456789abcdef0123456789"
MIN_SECRET_BYTES = 32
#: Variables whose names hold one of these words carry secrets.
SECRET_WORDS = ("SECRET", "KEY", "PASSWORD", "CLIENTS", "URL")

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


class RecordedEnviron(Mapping[str, str]):
    """An environment that remembers every name looked up in it, found or not.

    The record is kept where the values are looked up rather than in one
    :class:`EnvReader`, so it holds whatever read the settings (each service's
    ``load_settings(environ)`` makes its own reader) and those loaders keep
    taking a plain mapping.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self._environ[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)

    def unread(self, prefix: str = "TESSERA_") -> list[str]:
        """The names starting with ``prefix`` that are set and were never looked up."""
        return sorted(n for n in self._environ if n.startswith(prefix) and n not in self.looked_up)

    def closest_read(self, name: str) -> str | None:
        """The looked-up name ``name`` most likely misspells, if one is close."""
        prefix = name.split("_", 1)[0] + "_"
        candidates = [n for n in self.looked_up if n.startswith(prefix)]
        matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
        return matches[0] if matches else None


class EnvReader:
    """Reads variables, remembering every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        file_name = self.environ.get(f"{name}_FILE")
        value = self.environ.get(name)
        if file_name and value:
            self.problems.append(f"{name} and {name}_FILE are both set; set one")
            return None
        if file_name:
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                self.problems.append(f"{name}_FILE: cannot read {file_name}: {exc.strerror}")
                return None
        return value if value not in (None, "") else None

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def parsed(self, name: str, parse: Callable[[str], T], default: T, what: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            # A value that holds secrets is named, never repeated (problems reach logs).
            shown = "" if any(word in name for word in SECRET_WORDS) else f"={value!r}"
            self.problems.append(f"{name}{shown} is not {what}")
            return default

    def positive_int(self, name: str, default: int) -> int:
        value = self.parsed(name, int, default, "an integer")
        if value <= 0:
            self.problems.append(f"{name} must be positive (got {value})")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (use 1/0, true/false)")
        return default


def parse_networks(value: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())


def check_url(reader: EnvReader, name: str, value: str | None, schemes: tuple[str, ...]) -> str:
    if value is None:
        reader.problems.append(f"{name} is required")
        return ""
    if urlsplit(value).scheme not in schemes:
        reader.problems.append(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return value


def read_secret(
    reader: EnvReader, name: str, development: bool, *, min_bytes: int = MIN_SECRET_BYTES
) -> bytes:
    value = reader.raw(name)
    if value is None:
        if development:
            return DEV_SECRET.encode()
        reader.problems.append(f"{name} (or {name}_FILE) is required outside development")
        return b""
    if PLACEHOLDER_MARK in value and not development:
        reader.problems.append(f"{name} is a development placeholder; generate a real secret")
    if len(value.encode()) < min_bytes:
        reader.problems.append(f"{name} must be at least {min_bytes} bytes")
    return value.encode()


def read_issuer(reader: EnvReader, *, development: bool, default: str) -> str:
    """``TESSERA_ISSUER``, tokens' ``iss``, the same rule for the auth service and the
    replicas: an http(s) URL without a query, https outside development; ``default``
    only in development. No trailing slash (``iss`` is compared as a string)."""
    issuer = reader.text("TESSERA_ISSUER")
    if issuer is None:
        if not development:
            reader.problems.append("TESSERA_ISSUER is required outside development")
        return default.rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        reader.problems.append("TESSERA_ISSUER must be an http(s) URL without a query")
    elif parts.scheme == "http" and not development:
        reader.problems.append("TESSERA_ISSUER must use https outside development")
    return issuer.rstrip("/")


def read_environment(reader: EnvReader) -> Environment:
    environment = reader.text("TESSERA_ENV", "production")
    if environment == "development":
        return "development"
    if environment != "production":
        reader.problems.append("TESSERA_ENV must be 'development' or 'production'")
    return "production"


def read_jwt_algorithm(reader: EnvReader) -> str:
    algorithm = reader.text("TESSERA_JWT_ALG", "ES256") or "ES256"
    if algorithm not in SUPPORTED_ALGORITHMS:
        reader.problems.append(
            f"TESSERA_JWT_ALG must be one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
        )
    return algorithm


def read_cookie_insecure(reader: EnvReader, development: bool) -> bool:
    insecure = reader.flag("TESSERA_COOKIE_INSECURE", False)
    if insecure and not development:
        reader.problems.append(
            "TESSERA_COOKIE_INSECURE is only allowed with TESSERA_ENV=development"
        )
    return insecure


def read_trusted_proxies(reader: EnvReader) -> tuple[Network, ...]:
    none: tuple[Network, ...] = ()
    return reader.parsed(
        "TESSERA_TRUSTED_PROXIES", parse_networks, none, "a comma-separated list of networks"
    )
