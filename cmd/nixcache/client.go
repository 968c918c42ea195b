package main

import "github.com/urfave/cli/v2"

// clientCommand onboards and diagnoses client machines.
func clientCommand(ui *ui) *cli.Command {
	return &cli.Command{Name: "client", Usage: "join a client machine to a cache, diagnose it", Hidden: true}
}
