"""Bearer tokens for a local process stack (``ProcessStack(tokens=True)``, ``kadapt up --tokens-file``).

One tokens file serves all three services (``KADAPT_<SVC>_AUTH_TOKENS_FILE``). It holds the lines of the
user's tokens file, if one is given, plus a freshly minted ``kadapt-gateway`` scanner token that the
gateway sends to the sampler (``KADAPT_GATEWAY_SAMPLER_TOKEN``: a tokens file keeps only hashes, so the
gateway's own token must be minted here). Without a user file, one token per scope is minted as well
(``stack-scanner``, ``stack-viewer``, ``stack-admin``) for tests and tools.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kadapt.auth import TokenStore, mint_token

SERVICES = ("gateway", "sampler", "recon")
GATEWAY_CLIENT = "kadapt-gateway"


@dataclass(frozen=True)
class StackTokens:
    """The stack's tokens file, the gateway's sampler token and the tokens minted per scope."""

    path: Path
    sampler_token: str
    clients: dict[str, str] = field(default_factory=dict)  # scope -> token (no user file only)

    def environment(self) -> dict[str, str]:
        env = {f"KADAPT_{service.upper()}_AUTH_TOKENS_FILE": str(self.path) for service in SERVICES}
        env["KADAPT_GATEWAY_SAMPLER_TOKEN"] = self.sampler_token
        return env

    def headers(self, scope: str) -> dict[str, str]:
        """``Authorization`` header of the token minted for ``scope`` (scanner, viewer or admin)."""
        return {"authorization": f"Bearer {self.clients[scope]}"}


def write_stack_tokens(directory: Path, tokens_file: Path | None = None) -> StackTokens:
    """Write ``directory/tokens`` (mode 0600) and return what the stack needs; a bad ``tokens_file``
    raises ``InvalidInputError`` naming its line before any process starts."""
    lines = ["# written by kadapt's process launcher; regenerated at every start"]
    clients: dict[str, str] = {}
    if tokens_file is not None:
        TokenStore.from_file(tokens_file)  # validate now, with the user's file name in the message
        lines.append(f"# from {tokens_file}")
        lines.append(tokens_file.read_text(encoding="utf-8").rstrip("\n"))
    else:
        for scope in ("scanner", "viewer", "admin"):
            token, line = mint_token(f"stack-{scope}", [scope])
            clients[scope] = token
            lines.append(line)
    sampler_token, gateway_line = mint_token(GATEWAY_CLIENT, ["scanner"])
    lines.append(gateway_line)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokens"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return StackTokens(path=path, sampler_token=sampler_token, clients=clients)
