package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// publisherCommand is a placeholder: see docs/uploads.md.
func publisherCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:   "publisher",
		Hidden: true,
		Action: func(*cli.Context) error { return errors.New("publisher: not built yet") },
	}
}
