// Command dev-server builds the newest Vault server the Go module proxy serves (v1.21.4,
// BUSL-1.1, which allows running it in tests) from its Go module, so keysync's suite can be run
// on it too: KEYSYNC_TEST_BAO_BIN=$(scripts/dev-server-bin --newest) scripts/test. The default
// server is v1.14.1 (../main.go); see ../README.md, "The newest Vault".
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
