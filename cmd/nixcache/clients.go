package main

import "github.com/urfave/cli/v2"

// clientsCommand manages the clients registry (admin side).
func clientsCommand(ui *ui) *cli.Command {
	return &cli.Command{Name: "clients", Usage: "manage the clients registry", Hidden: true}
}
