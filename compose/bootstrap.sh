#!/bin/sh
# Bootstrap a fresh OpenBao / Vault for keysync: write the policies in policies/, enable
# AppRole, create the role the agent logs in with, and hand the agent its role_id and a
# response-wrapped secret_id (single use, 10 min) through a directory; give the operator a
# token with the keysync-admin policy. Used as-is by both the compose stack (bootstrap service,
# `bao` CLI from the openbao/openbao image) and scripts/demo (the `vault` dev-server binary),
# so the native demo is the executable proof of this script.
#
# Environment: BAO (the CLI, default `bao`), BAO_ADDR or VAULT_ADDR, BAO_TOKEN or VAULT_TOKEN
# (root / bootstrap token), POLICIES (dir of *.hcl, default /policies), AGENT_DIR (gets
# role_id and secret_id), OPERATOR_DIR (gets admin_token), AGENT_UID (owner of the agent's
# files when run as root, default 10001).
set -eu

BAO=${BAO:-bao}
POLICIES=${POLICIES:-/policies}
AGENT_DIR=${AGENT_DIR:-/run/keysync}
OPERATOR_DIR=${OPERATOR_DIR:-/run/operator}
AGENT_UID=${AGENT_UID:-10001}
# The bao CLI reads BAO_*, the vault CLI VAULT_*: set both so either works.
BAO_ADDR="${BAO_ADDR:-${VAULT_ADDR:-http://127.0.0.1:8200}}"
BAO_TOKEN="${BAO_TOKEN:-${VAULT_TOKEN:-}}"
VAULT_ADDR="$BAO_ADDR"
VAULT_TOKEN="$BAO_TOKEN"
export BAO_ADDR BAO_TOKEN VAULT_ADDR VAULT_TOKEN

say() { printf '    bootstrap: %s\n' "$*"; }

i=0
until "$BAO" status >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 100 ] || { echo "bootstrap: $BAO_ADDR did not answer within 20 s" >&2; exit 1; }
  sleep 0.2
done

for p in "$POLICIES"/*.hcl; do
  name=$(basename "$p" .hcl)
  "$BAO" policy write "$name" "$p" >/dev/null
  say "policy $name from $(basename "$p")"
done

if ! "$BAO" auth list -format=json | grep -q '"approle/"'; then
  "$BAO" auth enable approle >/dev/null
  say "enabled AppRole at approle/"
fi
"$BAO" write auth/approle/role/keysync-agent token_policies=keysync-agent \
  token_ttl=1h token_max_ttl=24h secret_id_ttl=24h >/dev/null
say "role keysync-agent (policy keysync-agent, token TTL 1h)"

mkdir -p "$AGENT_DIR" "$OPERATOR_DIR"
umask 077
"$BAO" read -field=role_id auth/approle/role/keysync-agent/role-id >"$AGENT_DIR/role_id"
"$BAO" write -wrap-ttl=10m -field=wrapping_token -f auth/approle/role/keysync-agent/secret-id \
  >"$AGENT_DIR/secret_id"
say "role_id and a wrapped secret_id (single use) in $AGENT_DIR"

"$BAO" token create -policy=keysync-admin -ttl=2h -field=token >"$OPERATOR_DIR/admin_token"
say "operator token (policy keysync-admin, 2h) in $OPERATOR_DIR/admin_token"

if [ "$(id -u)" = 0 ]; then
  chown -R "$AGENT_UID:$AGENT_UID" "$AGENT_DIR" "$OPERATOR_DIR"
fi
