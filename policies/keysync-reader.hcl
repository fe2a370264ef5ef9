# keysync-reader: a render-only agent (`keysync run` without rotation).
# Reads key data and metadata under secret/keysync/ and nothing else.

path "secret/data/keysync/*" {
  capabilities = ["read"]
}

path "secret/metadata/keysync/*" {
  capabilities = ["read", "list"]
}

path "secret/metadata/keysync" {
  capabilities = ["list"]
}
