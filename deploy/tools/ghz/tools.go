//go:build tools

// Package tools pins ghz (built by deploy/tools/tools.sh: go build github.com/bojand/ghz/cmd/ghz).
package tools

import _ "github.com/bojand/ghz/cmd/ghz"
