#!/usr/bin/env bash
# Applied to the vendored modules before building: sdk v0.9.2 refuses, at the first request, a
# route of Vault v1.14.1's own sys/managed-keys stub that defines CreateOperation without an
# ExistenceCheck (a check the sdk gained after v1.14.1 was cut). Older sdks let such a route
# through as an update, which is what v1.14.1 was built and tested with.
set -euo pipefail
f=vendor/github.com/hashicorp/vault/sdk/framework/backend.go
before='panic(fmt.Sprintf("Pattern %v defines a CreateOperation but no ExistenceCheck", p.Pattern))'
after='_ = p // keysync dev-server patch: Vault v1.14.1 predates this sdk check'
n=$(grep -cF "$before" "$f" || true)
if [ "$n" != 2 ]; then
  echo "patch.sh: expected 2 occurrences of the ExistenceCheck panic in $f, found $n" >&2
  exit 1
fi
sed -i "s|$before|$after|" "$f"
