#!/bin/sh
# Writes the docker compose secrets next to this script (docs/operations.md, docs/security.md):
#   gateway-tokens   scanner clients (scope scanner) + an operator (admin), as client_id:scopes:sha256 lines
#   sampler-tokens   the gateway's client (scope scanner) at the sampler
#   recon-tokens     the operator (admin) at the recon service (POST /v1/jobs, dead letters)
#   sampler-token    the gateway's raw token for the sampler (read into KADAPT_GATEWAY_SAMPLER_TOKEN)
# Usage: deploy/secrets/generate.sh [--force] [SCANNER_ID ...]   (default scanner id: scanner)
# Each raw token is printed once: give it to its client now, only its SHA-256 is kept.
set -eu
cd "$(dirname "$0")"
force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
for file in gateway-tokens sampler-tokens recon-tokens sampler-token; do
    if [ -e "$file" ] && [ "$force" -eq 0 ]; then
        echo "deploy/secrets/$file exists; --force replaces every secret (clients need new tokens)" >&2
        exit 1
    fi
done
chmod 0700 .
python3 - "$@" <<'PY'
import hashlib, os, secrets, sys

def mint(client_id: str, scopes: str) -> tuple[str, str]:
    # 256 random bits; SHA-256 suffices for high-entropy tokens (no salt or slow hash needed).
    token = secrets.token_urlsafe(32)
    return token, f"{client_id}:{scopes}:{hashlib.sha256(token.encode()).hexdigest()}\n"

def write(name: str, text: str) -> None:
    # 0644: docker compose bind-mounts the file as is and the services run as uid 10001; the directory
    # (0700) keeps other users of the host out. The token files hold hashes only.
    with open(name, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(name, 0o644)

scanners = sys.argv[1:] or ["scanner"]
gateway_lines = "# client_id:scopes:sha256 (docs/security.md)\n"
for scanner in scanners:
    token, line = mint(scanner, "scanner")
    gateway_lines += line
    print(f"{scanner} (scanner, gateway): {token}")
operator_token, operator_line = mint("operator", "admin")
print(f"operator (admin, gateway and recon): {operator_token}")
gateway_token, gateway_line = mint("gateway", "scanner")
write("gateway-tokens", gateway_lines + operator_line)
write("sampler-tokens", "# the gateway's token at the sampler\n" + gateway_line)
write("recon-tokens", "# operators at the recon service\n" + operator_line)
write("sampler-token", gateway_token)
print("wrote gateway-tokens, sampler-tokens, recon-tokens, sampler-token", file=sys.stderr)
PY
