// Command refresherd keeps PostgreSQL materialized views fresh.
package main

import (
	"os"

	"github.com/refresherd/refresherd/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Env{
		Version: version,
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
		Getenv:  os.Getenv,
	}))
}
