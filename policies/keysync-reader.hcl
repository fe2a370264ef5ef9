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

# Only for agent.report_renders = true: the agent's report of what it rendered, so rotating
# agents can retire a previous key once every consumer switched.
path "secret/data/keysync/_acks/*" {
  capabilities = ["create", "update"]
}
