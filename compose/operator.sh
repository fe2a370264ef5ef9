#!/bin/sh
# The operator's part of the demo, shared by the compose stack (services `seed` and `rotate`,
# keysync image) and scripts/demo (native), so both do exactly the same thing.
#
#   operator.sh seed     put three keys by hand: openai, deepseek, gateway
#   operator.sh rotate   wait until the agent rendered gateway, rotate it with its provider
#                        (type = "generate": a fresh random key), show status and audit
#
# Environment: KEYSYNC (the binary, default `keysync`), KEYSYNC_CONFIG (operator.toml: token
# auth with a keysync-admin token, the gateway key's provider), KEYS_DIR (the agent's output,
# default /keys), SETTLE (seconds the consumer gets to load the first key, default 2).
set -eu

KEYSYNC=${KEYSYNC:-keysync}
KEYS_DIR=${KEYS_DIR:-/keys}
SETTLE=${SETTLE:-2}

say() { printf '\n==> %s\n' "$*"; }
rand() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

case "${1:-}" in
seed)
  say "an operator puts three keys (token with the keysync-admin policy)"
  rand_key=$(rand)
  printf 'sk-demo-%s' "$rand_key" |
    "$KEYSYNC" put openai --field base_url=https://api.openai.com/v1 --reason "initial import"
  rand_key=$(rand)
  printf 'sk-ds-%s' "$rand_key" | "$KEYSYNC" put deepseek --field base_url=https://api.deepseek.com --reason "initial import"
  rand_key=$(rand)
  printf 'sk-gw-%s' "$rand_key" | "$KEYSYNC" put gateway --reason "initial key"
  "$KEYSYNC" list
  ;;
rotate)
  i=0
  until [ -s "$KEYS_DIR/gateway.key" ]; do
    i=$((i + 1))
    [ "$i" -le 300 ] || { echo "operator: the agent did not render $KEYS_DIR/gateway.key within 60 s" >&2; exit 1; }
    sleep 0.2
  done
  sleep "$SETTLE"
  say "keysync rotate gateway --force: the provider (generate) mints a new key, keysync stores it as pending, promotes it; the old key stays valid for the grace period"
  "$KEYSYNC" rotate gateway --force --reason "demo rotation"
  say "keysync status gateway"
  "$KEYSYNC" status gateway
  say "keysync audit gateway"
  "$KEYSYNC" audit gateway
  ;;
*)
  echo "usage: operator.sh seed|rotate" >&2
  exit 2
  ;;
esac
