"""``kadapt auth token CLIENT --scope SCOPE``: mint a bearer token and its tokens-file line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kadapt.cli.common import console, fail
from kadapt.errors import KadaptError

auth_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the services (docs/security.md).")


@auth_app.command("token")
def token(
    client: Annotated[str, typer.Argument(help="client id, e.g. scanner-3t-a (letters, digits, . _ -)")],
    scope: Annotated[
        list[str], typer.Option(help="scanner | viewer | admin (repeatable; admin implies all)")
    ] = ["scanner"],  # noqa: B006
    append: Annotated[
        Path | None, typer.Option(help="also append the line to this tokens file (created with mode 0600)")
    ] = None,
) -> None:
    """Print a new random token once (give it to the client) and the line for the tokens file, which
    keeps only the token's SHA-256."""
    from kadapt.auth import mint_token

    try:
        secret, line = mint_token(client, scope)
    except KadaptError as error:
        raise fail(error) from error
    if append is not None:
        import os

        descriptor = os.open(append, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        console.print(f"appended the line to {append}")
    console.print(
        "token (shown once; the client sends 'Authorization: Bearer <token>', replay: KADAPT_TOKEN):"
    )
    typer.echo(secret)
    console.print("tokens-file line (client_id:scopes:sha256):")
    typer.echo(line)
