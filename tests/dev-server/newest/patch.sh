#!/usr/bin/env bash
# Applied to the vendored modules before building the newest Vault (v1.21.4). Its go.mod names
# sdk v0.21.0, but v1.21.4 was built with the sdk in its own tree (a `replace => ./sdk` that Go
# ignores for a dependency), which still had the two-argument framework.Backend.ActivationFunc;
# sdk v0.21.0 added a third (string) argument, so Vault's own identity store and activation-flag
# code no longer compile. The older sdk v0.20.0 has the old signature but lacks packages v1.21.4
# imports (sdk/helper/testhelpers/observations). Put back the signature Vault was released with.
set -euo pipefail
f=vendor/github.com/hashicorp/vault/sdk/framework/backend.go
before='ActivationFunc func(context.Context, *logical.Request, string) error'
after='ActivationFunc func(context.Context, *logical.Request) error // keysync dev-server patch: the signature Vault v1.21.4 was released with'
n=$(grep -cF "$before" "$f" || true)
if [ "$n" != 1 ]; then
  echo "patch.sh: expected 1 occurrence of the three-argument ActivationFunc in $f, found $n" >&2
  exit 1
fi
# perl's \Q…\E: the text holds regex characters (`*`, `.`), so match it literally.
BEFORE="$before" AFTER="$after" perl -pi -e 's/\Q$ENV{BEFORE}\E/$ENV{AFTER}/' "$f"
grep -qF "$after" "$f" || { echo "patch.sh: the ActivationFunc signature in $f was not replaced" >&2; exit 1; }
