package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// auditCommand is a placeholder: see docs/uploads.md.
func auditCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:   "audit",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("audit: not built yet") },
	}
}
