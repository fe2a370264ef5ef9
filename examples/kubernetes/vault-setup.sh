#!/usr/bin/env bash
# The Vault side of examples/kubernetes: the kubernetes auth method, keysync's policies, and
# one role per service account (bound to its name, its namespace and the audience "vault").
# Run with VAULT_ADDR and an admin VAULT_TOKEN set (VAULT_CACERT for a private CA).
#
# What Vault needs to know about the cluster comes from kubectl's current context, unless
# given: KUBERNETES_HOST (the API server URL), KUBERNETES_CA_CERT_FILE (its CA, PEM) and
# TOKEN_REVIEWER_JWT_FILE (a token allowed to create TokenReviews; see token-reviewer.yaml).
# tests/kubernetes.rs runs this very script against the real Vault dev server.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
policies="$here/../../policies"
vault=${VAULT_CLI:-vault}
namespace=${NAMESPACE:-llm-apps}
mount=${KUBERNETES_AUTH_MOUNT:-kubernetes}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "${KUBERNETES_HOST:-}" ]; then
  command -v kubectl >/dev/null || { echo "vault-setup.sh: kubectl is needed (or set KUBERNETES_HOST, KUBERNETES_CA_CERT_FILE, TOKEN_REVIEWER_JWT_FILE)" >&2; exit 1; }
  KUBERNETES_HOST=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  KUBERNETES_CA_CERT_FILE="$work/kube-ca.pem"
  kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$KUBERNETES_CA_CERT_FILE"
  kubectl apply -f "$here/namespace.yaml" -f "$here/token-reviewer.yaml"
  TOKEN_REVIEWER_JWT_FILE="$work/reviewer.jwt"
  for _ in $(seq 30); do
    kubectl -n "$namespace" get secret vault-token-reviewer -o jsonpath='{.data.token}' | base64 -d >"$TOKEN_REVIEWER_JWT_FILE"
    [ -s "$TOKEN_REVIEWER_JWT_FILE" ] && break
    sleep 1 # the token controller fills the Secret shortly after it is created
  done
fi
: "${KUBERNETES_CA_CERT_FILE:?set KUBERNETES_CA_CERT_FILE to the API server CA (PEM)}"
: "${TOKEN_REVIEWER_JWT_FILE:?set TOKEN_REVIEWER_JWT_FILE to a token allowed to create TokenReviews}"
[ -s "$TOKEN_REVIEWER_JWT_FILE" ] || { echo "vault-setup.sh: $TOKEN_REVIEWER_JWT_FILE is empty" >&2; exit 1; }

if "$vault" auth list -format=json | grep -q "\"$mount/\""; then
  echo "auth/$mount is already enabled"
else
  "$vault" auth enable -path="$mount" kubernetes
fi
"$vault" write "auth/$mount/config" \
  kubernetes_host="$KUBERNETES_HOST" \
  kubernetes_ca_cert=@"$KUBERNETES_CA_CERT_FILE" \
  token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE"

"$vault" policy write keysync-reader "$policies/keysync-reader.hcl"
"$vault" policy write keysync-agent "$policies/keysync-agent.hcl"

# The app's sidecar: read-only. Tokens live an hour, keysync renews them and logs in again
# (with the kubelet's fresh projected token) before the 4 h maximum.
"$vault" write "auth/$mount/role/keysync-reader" \
  bound_service_account_names=keysync \
  bound_service_account_namespaces="$namespace" \
  audience=vault \
  token_policies=keysync-reader \
  token_ttl=1h token_max_ttl=4h

# The rotator: writes new key versions.
"$vault" write "auth/$mount/role/keysync-rotator" \
  bound_service_account_names=keysync-rotator \
  bound_service_account_namespaces="$namespace" \
  audience=vault \
  token_policies=keysync-agent \
  token_ttl=1h token_max_ttl=4h

if [ -n "${VAULT_CACERT:-}" ] && command -v kubectl >/dev/null; then
  kubectl -n "$namespace" create configmap vault-ca --from-file=ca.crt="$VAULT_CACERT" --dry-run=client -o yaml | kubectl apply -f -
fi
echo "vault-setup.sh: kubernetes auth at auth/$mount with roles keysync-reader and keysync-rotator for namespace $namespace"
