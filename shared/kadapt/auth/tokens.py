"""Bearer tokens with scopes: the tokens file, hashed storage, constant-time lookup, minting.

Scopes (``docs/security.md`` has the route matrix)::

    admin    everything: implies scanner and viewer (operator tools, e.g. the recon POST /v1/jobs)
    scanner  drive scans: create, ingest, plan, complete, delete; implies viewer (a scanner reads back
             its scans and images; per-scan ownership is not enforced)
    viewer   read only: GET scans, images, masks, policies, methods, models, job results

Tokens file, one client token per line (``#`` starts a comment, blank lines are ignored; ``;`` also
separates entries, so the same text fits one environment variable)::

    # client_id:scope[,scope...]:sha256-hex-of-the-token
    scanner-3t-a:scanner:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

The file holds the SHA-256 of each token, never the token. Several lines may name the same client
(rotation: add the new token's line, move the client over, delete the old line). Tokens come from
:func:`mint_token` (``secrets.token_urlsafe(32)``: 256 random bits).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kadapt.errors import ForbiddenError, InvalidInputError, UnauthenticatedError

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# RFC 6750 section 2.1 b64token; bounded so that a giant header is refused before it is hashed.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]{1,512}=*) *", re.IGNORECASE)


class Scope(str, Enum):
    """What a token may do; see the module docstring for the matrix."""

    scanner = "scanner"
    viewer = "viewer"
    admin = "admin"


IMPLIED_SCOPES: Mapping[Scope, frozenset[Scope]] = {
    Scope.admin: frozenset(Scope),
    Scope.scanner: frozenset({Scope.scanner, Scope.viewer}),
    Scope.viewer: frozenset({Scope.viewer}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: its id and the scopes its token grants (implied scopes included)."""

    client_id: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


def granted_scopes(scopes: Iterable[Scope]) -> frozenset[Scope]:
    """``scopes`` with everything they imply (admin -> all, scanner -> viewer)."""
    granted: set[Scope] = set()
    for scope in scopes:
        granted |= IMPLIED_SCOPES[scope]
    return frozenset(granted)


def require(principal: Principal, scope: Scope) -> None:
    """Raise :class:`ForbiddenError` (403) unless ``principal`` holds ``scope``."""
    if not principal.allows(scope):
        raise ForbiddenError(
            f"client {principal.client_id!r} lacks the {scope.value!r} scope",
            required_scope=scope.value,
        )


def token_digest(token: str) -> str:
    """The hex SHA-256 a tokens file stores for ``token``.

    A plain fast hash is right here, unlike for passwords: the tokens carry 256 random bits, so nobody can
    search the token space whatever the hash costs, while a slow KDF (bcrypt, argon2) would add
    milliseconds to every request on a 5 ms plan path and buy nothing.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """Scope names (``scanner``, ``viewer``, ``admin``) as scopes; ``InvalidInputError`` naming a bad one."""
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name.strip()))
        except ValueError:
            known = ", ".join(scope.value for scope in Scope)
            raise InvalidInputError(f"unknown scope {name.strip()!r}; choose from {known}") from None
    if not scopes:
        raise InvalidInputError("a token needs at least one scope")
    return frozenset(scopes)


def check_client_id(client_id: str) -> str:
    if not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise InvalidInputError(
            f"client id {client_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return client_id


def token_line(client_id: str, scopes: Iterable[Scope], digest: str) -> str:
    """One tokens-file line."""
    names = ",".join(sorted(scope.value for scope in scopes))
    return f"{check_client_id(client_id)}:{names}:{digest}"


def mint_token(client_id: str, scopes: Iterable[Scope | str]) -> tuple[str, str]:
    """A new random token for ``client_id`` and the tokens-file line that admits it.

    The token is shown once (the file keeps only its hash); ``secrets.token_urlsafe(32)`` is 256 bits.
    """
    parsed = parse_scopes(scope.value if isinstance(scope, Scope) else scope for scope in scopes)
    token = secrets.token_urlsafe(32)
    return token, token_line(client_id, parsed, token_digest(token))


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of a tokens file: the client, the scopes it was given (unexpanded), the token's digest."""

    client_id: str
    scopes: frozenset[Scope]
    digest: str


def parse_token_lines(text: str, source: str) -> list[TokenEntry]:
    """The entries of tokens-file ``text``; ``InvalidInputError`` names ``source`` and the bad line
    (never its content: a mistyped line may hold a raw token)."""
    entries: list[TokenEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        for item in raw.split("#", 1)[0].split(";"):
            line = item.strip()
            if not line:
                continue
            parts = line.split(":")
            where = f"{source} line {number}"
            if len(parts) != 3:
                raise InvalidInputError(f"{where}: expected client_id:scope[,scope]:sha256hex")
            client_id, scope_names, digest = (part.strip() for part in parts)
            if not _DIGEST_PATTERN.fullmatch(digest):
                raise InvalidInputError(f"{where}: the third field is not a lowercase hex SHA-256")
            try:
                entry = TokenEntry(check_client_id(client_id), parse_scopes(scope_names.split(",")), digest)
            except InvalidInputError as error:
                raise InvalidInputError(f"{where}: {error.detail}") from None
            entries.append(entry)
    return entries


def _read_tokens_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInputError(f"cannot read the tokens file {path}: {error.strerror}") from None


class TokenStore:
    """The admitted tokens, by digest. :meth:`authenticate` is O(1) per request: one SHA-256 of the
    presented token, one dict lookup, one constant-time compare."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._by_digest: dict[str, TokenEntry] = {}
        self._principals: dict[str, Principal] = {}
        for entry in entries:
            if entry.digest in self._by_digest:
                first = self._by_digest[entry.digest].client_id
                raise InvalidInputError(
                    f"the same token hash is listed twice (clients {first!r} and {entry.client_id!r})"
                )
            self._by_digest[entry.digest] = entry
            self._principals[entry.digest] = Principal(entry.client_id, granted_scopes(entry.scopes))

    @classmethod
    def from_text(cls, text: str, source: str = "tokens text") -> TokenStore:
        return cls(parse_token_lines(text, source))

    @classmethod
    def from_file(cls, path: Path) -> TokenStore:
        return cls(parse_token_lines(_read_tokens_file(path), str(path)))

    @classmethod
    def from_sources(cls, path: Path | None, text: str | None) -> TokenStore:
        """The union of a tokens file and tokens text (either may be absent)."""
        entries = parse_token_lines(_read_tokens_file(path), str(path)) if path is not None else []
        if text:
            entries += parse_token_lines(text, "tokens text")
        return cls(entries)

    def __len__(self) -> int:
        return len(self._by_digest)

    def clients(self) -> list[str]:
        return sorted({entry.client_id for entry in self._by_digest.values()})

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header value.

        Raises :class:`UnauthenticatedError` (401) for a missing or malformed header or an unknown token.
        The dict lookup is keyed by the token's SHA-256, which an attacker cannot steer byte by byte, so
        its timing says nothing about any stored token; ``hmac.compare_digest`` then confirms the match
        in constant time.
        """
        if not authorization:
            raise UnauthenticatedError(
                "this route needs an Authorization: Bearer token", reason="missing-token"
            )
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise UnauthenticatedError(
                "the Authorization header is not 'Bearer <token>'", reason="malformed-header"
            )
        digest = token_digest(match.group(1))
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            raise UnauthenticatedError("the bearer token is not valid", reason="invalid-token")
        return self._principals[digest]
