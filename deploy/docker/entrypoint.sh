#!/bin/sh
# Entry point of the kadapt images.
# 1. Docker secrets arrive as files: KADAPT_GATEWAY_SAMPLER_TOKEN_FILE=/run/secrets/... is read into
#    KADAPT_GATEWAY_SAMPLER_TOKEN (the gateway's bearer token for the sampler). The services' own token
#    files need no help: KADAPT_<SERVICE>_AUTH_TOKENS_FILE is a setting (docs/security.md).
# 2. `gateway|sampler|recon ARGS` runs `kadapt serve SERVICE ARGS`; anything else runs `kadapt ARGS`
#    (e.g. `up`, `jobs dead-letters`).
set -eu
if [ -n "${KADAPT_GATEWAY_SAMPLER_TOKEN_FILE:-}" ]; then
    KADAPT_GATEWAY_SAMPLER_TOKEN="$(cat "${KADAPT_GATEWAY_SAMPLER_TOKEN_FILE}")"
    export KADAPT_GATEWAY_SAMPLER_TOKEN
fi
case "${1:-}" in
    gateway | sampler | recon) exec kadapt serve "$@" ;;
    *) exec kadapt "$@" ;;
esac
