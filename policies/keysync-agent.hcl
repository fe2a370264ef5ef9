# keysync-agent: a rotating agent (`keysync run` with agent.rotate = true).
# Reads and writes key versions under secret/keysync/, updates their rotation state in
# custom_metadata (merge PATCH), and destroys the data of retired versions.
# Mount `secret` and prefix `keysync` are keysync's defaults: change both paths if you change them.

path "secret/data/keysync/*" {
  capabilities = ["create", "read", "update", "patch"]
}

path "secret/metadata/keysync/*" {
  capabilities = ["create", "read", "update", "patch", "list"]
}

path "secret/metadata/keysync" {
  capabilities = ["list"]
}

path "secret/destroy/keysync/*" {
  capabilities = ["update"]
}
