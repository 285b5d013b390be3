// compose-config loads a compose file the way `docker compose config` does and prints the project as JSON.
//
// It is the Compose Specification's reference loader (compose-go, the library
// inside docker compose): schema validation, interpolation, anchors and merge
// keys, profiles, relative bind sources resolved against the file's folder.
// The tests run it where no docker compose plugin (and no Docker engine) is
// installed; deploy/tools/install.sh builds it into a cache outside the
// repository.
//
//	compose-config [-f docker-compose.yml] [--profile NAME]...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type names []string

func (n *names) String() string     { return strings.Join(*n, ",") }
func (n *names) Set(v string) error { *n = append(*n, v); return nil }

func main() {
	file := flag.String("f", "docker-compose.yml", "the compose file")
	var profiles names
	flag.Var(&profiles, "profile", "a profile to enable (repeatable)")
	flag.Parse()
	if err := run(*file, profiles); err != nil {
		fmt.Fprintln(os.Stderr, "compose-config:", err)
		os.Exit(1)
	}
}

func run(file string, profiles []string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithResolvedPaths(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}
