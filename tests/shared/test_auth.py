"""kadapt.auth: the tokens file, hashed lookup, scopes, the token bucket and the admission order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kadapt.auth import (
    AuthGate,
    RateLimiter,
    Scope,
    TokenStore,
    build_gate,
    mint_token,
    require,
    token_digest,
)
from kadapt.errors import ForbiddenError, InvalidInputError, RateLimitedError, UnauthenticatedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_minted_token_is_random_and_its_line_holds_only_the_hash() -> None:
    token, line = mint_token("scanner-a", ["scanner", "viewer"])
    other, _ = mint_token("scanner-a", [Scope.scanner])
    assert token != other
    assert len(token) >= 43
    assert line == f"scanner-a:scanner,viewer:{hashlib.sha256(token.encode()).hexdigest()}"
    assert token not in line


def test_tokens_file_comments_blank_lines_and_separators(tmp_path: Path) -> None:
    scanner, scanner_line = mint_token("scanner-a", ["scanner"])
    viewer, viewer_line = mint_token("viewer.b", ["viewer"])
    admin, admin_line = mint_token("ops", ["admin"])
    path = tmp_path / "tokens"
    path.write_text(f"# kadapt tokens\n\n{scanner_line}  # MR 3T\n{viewer_line};{admin_line}\n")
    store = TokenStore.from_file(path)
    assert len(store) == 3
    assert store.clients() == ["ops", "scanner-a", "viewer.b"]
    principal = store.authenticate(f"Bearer {scanner}")
    assert principal.client_id == "scanner-a"
    assert principal.scopes == {Scope.scanner, Scope.viewer}  # scanner implies viewer
    assert store.authenticate(f"bearer {viewer}").scopes == {Scope.viewer}
    assert store.authenticate(f"Bearer {admin}").scopes == set(Scope)  # admin implies everything


def test_file_and_text_are_merged_and_a_client_may_hold_two_tokens(tmp_path: Path) -> None:
    old, old_line = mint_token("scanner-a", ["scanner"])
    new, new_line = mint_token("scanner-a", ["scanner"])  # rotation: both valid until the old line goes
    path = tmp_path / "tokens"
    path.write_text(old_line + "\n")
    store = TokenStore.from_sources(path, new_line)
    assert store.authenticate(f"Bearer {old}").client_id == store.authenticate(f"Bearer {new}").client_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scanner-a:scanner", "expected client_id:scope"),
        (f"scanner-a:root:{'0' * 64}", "unknown scope 'root'"),
        (f"scanner-a::{'0' * 64}", "unknown scope ''"),
        (f"../a:scanner:{'0' * 64}", "client id '../a'"),
        ("scanner-a:scanner:not-a-hash", "not a lowercase hex SHA-256"),
        (f"a:scanner:{'0' * 64}\nb:viewer:{'0' * 64}", "listed twice"),
    ],
)
def test_bad_lines_are_refused_by_line_number(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        TokenStore.from_text(text, source="tokens.txt")
    if "twice" not in message:
        assert "tokens.txt line 1" in caught.value.detail


def test_a_raw_token_pasted_by_mistake_is_not_echoed() -> None:
    token, _ = mint_token("scanner-a", ["scanner"])
    with pytest.raises(InvalidInputError) as caught:
        TokenStore.from_text(f"scanner-a:scanner:{token}")
    assert token not in caught.value.detail


@pytest.mark.parametrize(
    ("header", "reason", "challenge"),
    [
        (None, "missing-token", 'Bearer realm="kadapt"'),
        ("", "missing-token", 'Bearer realm="kadapt"'),
        ("Basic dXNlcjpwYXNz", "malformed-header", 'Bearer realm="kadapt", error="invalid_token"'),
        ("Bearer", "malformed-header", 'Bearer realm="kadapt", error="invalid_token"'),
        ("Bearer " + "a" * 600, "malformed-header", 'Bearer realm="kadapt", error="invalid_token"'),
        ("Bearer not-a-known-token", "invalid-token", 'Bearer realm="kadapt", error="invalid_token"'),
    ],
)
def test_unauthenticated_requests(header: str | None, reason: str, challenge: str) -> None:
    _, line = mint_token("scanner-a", ["scanner"])
    with pytest.raises(UnauthenticatedError) as caught:
        TokenStore.from_text(line).authenticate(header)
    error = caught.value
    assert (error.status, error.slug, error.extra["reason"]) == (401, "unauthenticated", reason)
    assert error.headers() == {"www-authenticate": challenge}


def test_the_store_keeps_digests_only() -> None:
    token, line = mint_token("scanner-a", ["scanner"])
    store = TokenStore.from_text(line)
    assert token not in repr(vars(store))
    assert token_digest(token) in line


def test_scope_check_is_403_with_the_required_scope() -> None:
    viewer_token, viewer_line = mint_token("viewer-b", ["viewer"])
    principal = TokenStore.from_text(viewer_line).authenticate(f"Bearer {viewer_token}")
    require(principal, Scope.viewer)
    with pytest.raises(ForbiddenError) as caught:
        require(principal, Scope.scanner)
    assert caught.value.status == 403
    assert caught.value.to_problem()["required_scope"] == "scanner"
    assert 'error="insufficient_scope", scope="scanner"' in caught.value.headers()["www-authenticate"]


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=8.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("a")
    assert caught.value.status == 429
    assert caught.value.extra["retry_after_s"] == pytest.approx(0.125)
    assert caught.value.headers() == {"retry-after": "1"}
    limiter.check("b")  # buckets are per client
    clock.now += 0.125  # one token back (binary-exact step)
    limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")
    clock.now += 60.0  # refills up to the burst, not beyond
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate_per_s=0.0, burst=1)
    for _ in range(100):
        limiter.check("a")
    assert not limiter.enabled


def test_gate_order_authenticate_then_rate_limit_then_scope() -> None:
    clock = FakeClock()
    viewer, viewer_line = mint_token("viewer-b", ["viewer"])
    gate = AuthGate(TokenStore.from_text(viewer_line), RateLimiter(1.0, 1, clock=clock))
    with pytest.raises(UnauthenticatedError):
        gate.admit("Bearer wrong", Scope.viewer)
    with pytest.raises(ForbiddenError):  # authenticated, within its rate, wrong scope
        gate.admit(f"Bearer {viewer}", Scope.scanner)
    with pytest.raises(RateLimitedError):  # the refused request spent the one token
        gate.admit(f"Bearer {viewer}", Scope.viewer)
    clock.now += 1.0
    assert gate.admit(f"Bearer {viewer}", Scope.viewer).client_id == "viewer-b"


def test_build_gate_is_none_without_tokens(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n")
    assert build_gate(None, None, rate_per_s=1.0, burst=1.0) is None
    assert build_gate(empty, "", rate_per_s=1.0, burst=1.0) is None
    _, line = mint_token("a", ["admin"])
    assert build_gate(empty, line, rate_per_s=1.0, burst=1.0) is not None
    with pytest.raises(InvalidInputError, match="cannot read the tokens file"):
        build_gate(tmp_path / "missing", None, rate_per_s=1.0, burst=1.0)
