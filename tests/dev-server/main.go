// Command dev-server builds the Vault server binary from its Go module so that keysync's
// tests and demo run against a real Vault-compatible server, never a fake.
//
// It is HashiCorp Vault v1.14.1 (MPL-2.0, the last release before the licence change), with
// github.com/hashicorp/vault/sdk v0.9.2. The OpenBao module route (the first choice) is not
// served by this workplace's module proxy; see README.md beside this file.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
