# keysync-admin: people and pipelines that manage keys by hand
# (put, import, rollback, disable/enable, delete/undelete, destroy).

path "secret/data/keysync/*" {
  capabilities = ["create", "read", "update", "patch"]
}

path "secret/metadata/keysync/*" {
  capabilities = ["create", "read", "update", "patch", "list", "delete"]
}

path "secret/metadata/keysync" {
  capabilities = ["list"]
}

path "secret/delete/keysync/*" {
  capabilities = ["update"]
}

path "secret/undelete/keysync/*" {
  capabilities = ["update"]
}

path "secret/destroy/keysync/*" {
  capabilities = ["update"]
}
