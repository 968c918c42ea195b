package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// pushCommand is a placeholder: see docs/uploads.md.
func pushCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:   "push",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("push: not built yet") },
	}
}
