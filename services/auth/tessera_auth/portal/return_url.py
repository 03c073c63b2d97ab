"""Where a browser may be sent after logging in: the one check of a return URL (``rd``).

A login page that redirects anywhere it is told is an open redirect: a link to
the real portal that lands on a look-alike page. So a return URL is accepted
only in two forms, each checked on its raw text rather than on what a parser
makes of it (parsers disagree: ``/\\evil`` is a path to Python's ``urllib`` and
the host ``evil`` to a browser, which also drops tabs and newlines anywhere):

- a path on this site: one ``/``, then anything but a second ``/``;
- an absolute ``https`` URL (``http`` too in development) whose authority is,
  character for character, that of an allowed origin (``host`` or ``host:port``):
  no user information, no percent-encoding, no trailing dot, nothing to interpret.

Both are printable ASCII without spaces and backslashes (a browser sends a URL
percent-encoded), at most :data:`MAX_LENGTH` characters, and stay so when
percent-decoded, as often as decoding changes them: no backslash, no control
character, no whitespace but a plain space (``%20`` is common in real paths and
no URL parser removes it), and a path that never becomes ``//host``. What
passes is returned unchanged; anything else is None, and the caller falls back
to its default: an invalid ``rd`` is never an error page that repeats it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_LENGTH", "Origin", "ReturnUrlPolicy", "origin_of", "parse_origin"]

MAX_LENGTH = 2048

#: ``(scheme, host, port)``: an origin as RFC 6454 compares them.
Origin = tuple[str, str, int]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Printable ASCII but the space (0x20) and the backslash (0x5C).
_PRINTABLE = re.compile(r"[!-\[\]-~]*")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?#].*)?", re.DOTALL)
_AUTHORITY = re.compile(
    r"(?:(?P<name>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)"
    r"|\[(?P<ipv6>[0-9a-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def parse_origin(text: str) -> Origin:
    """The origin ``scheme://host[:port]`` (a trailing ``/`` allowed) names; ValueError
    for anything else: another scheme, user information, a path, a query, a fragment."""
    match = _ABSOLUTE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an origin: {text!r}")
    scheme, authority, rest = match.group(1).lower(), match.group(2).lower(), match.group(3)
    parts = _AUTHORITY.fullmatch(authority)
    if scheme not in DEFAULT_PORTS or parts is None or rest not in (None, "/"):
        raise ValueError(f"not an origin: {text!r}")
    port = int(parts["port"]) if parts["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"not an origin: {text!r}")
    return scheme, parts["name"] or parts["ipv6"], port


def origin_of(url: str) -> Origin:
    """The origin of an http(s) URL whatever its path (the issuer's, which settings
    have already checked); ValueError when it has none."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"no http(s) origin in {url!r}")
    return scheme, parts.hostname, parts.port or DEFAULT_PORTS[scheme]


def _authorities(origin: Origin) -> Iterator[str]:
    """How a URL may spell ``origin``'s authority: ``host:port``, and ``host`` alone
    when the port is the scheme's default."""
    scheme, host, port = origin
    name = f"[{host}]" if ":" in host else host
    yield f"{name}:{port}"
    if port == DEFAULT_PORTS[scheme]:
        yield name


def _decodings(text: str) -> Iterator[str]:
    """``text`` and each percent-decoding of it, until decoding changes nothing
    (``%252F`` is ``%2F`` to whoever decodes once, and ``/`` to whoever decodes twice).
    Ends: each decoding that changes something is shorter."""
    yield text
    while (decoded := unquote(text)) != text:
        yield decoded
        text = decoded


def _harmless(character: str) -> bool:
    if character == " ":
        return True
    if character == "\\" or character.isspace():
        return False
    return unicodedata.category(character) not in ("Cc", "Cf", "Zl", "Zp")


@dataclass(frozen=True)
class ReturnUrlPolicy:
    """The origins a browser may be sent back to, and whether plain ``http`` is one."""

    origins: frozenset[Origin]
    allow_http: bool = False

    @classmethod
    def of(cls, origins: Iterable[Origin], *, allow_http: bool) -> ReturnUrlPolicy:
        return cls(frozenset(origins), allow_http)

    def validate(self, candidate: str | None) -> str | None:
        """``candidate`` if a browser may be sent there after logging in, else None."""
        if not candidate or len(candidate) > MAX_LENGTH or not _PRINTABLE.fullmatch(candidate):
            return None
        relative = candidate.startswith("/")
        if relative:
            if candidate.startswith("//"):
                return None
        elif not self._allowed_absolute(candidate):
            return None
        for form in _decodings(candidate):
            if not all(map(_harmless, form)):
                return None
            if relative and form.startswith("//"):
                return None
        return candidate

    def _allowed_absolute(self, candidate: str) -> bool:
        match = _ABSOLUTE.fullmatch(candidate)
        if match is None:
            return False
        scheme, authority = match.group(1).lower(), match.group(2).lower()
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            return False
        return any(
            authority in _authorities(origin) for origin in self.origins if origin[0] == scheme
        )
