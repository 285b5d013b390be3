#!/usr/bin/env bash
# Checkers the tests run that a fresh machine lacks, built with Go from the Go module proxy into a cache outside the repository.
#
#   tools.sh build    build what is missing; print one KEY=path line per tool
#   tools.sh env      the same lines, building nothing (a tool not built yet is left out)
#   tools.sh ghz      build ghz if missing; print its path
#
# - compose-config (deploy/tools/compose-config): the Compose Specification's
#   reference loader (compose-go, the library inside `docker compose`), for
#   `docker compose config` where no compose plugin and no Docker engine are
#   installed. Pinned by its go.mod and go.sum.
# - promtool at the version of the prom/prometheus image in docker-compose.yml
#   (Prometheus 3.5.0 is Go module v0.305.0), so the config and the dashboard's
#   PromQL are checked by the parser that will run them. Pinned by
#   deploy/tools/promtool/go.mod and go.sum.
# - ghz (deploy/tools/ghz): the gRPC load generator of the bench's rls phase
#   (Envoy's rate limit service); built only by `tools.sh ghz`, which prints
#   its path. Pinned by its go.mod and go.sum.
#
# A binary is named after the hash of its module's files: an edit rebuilds it.
#
# Settings (environment):
#   BUCKETSTREAM_TOOLS   ~/.cache/bucketstream/tools (the binaries)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${BUCKETSTREAM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/bucketstream/tools}
shopt -s nullglob
sources_hash() { cat "$here/$1"/go.mod "$here/$1"/go.sum "$here/$1"/*.go | cksum | cut -d' ' -f1; }
compose_bin=$dir/compose-config-$(sources_hash compose-config)
prom_bin=$dir/promtool-$(sources_hash promtool)
ghz_bin=$dir/ghz-$(sources_hash ghz)

die() { echo "tools.sh: $*" >&2; exit 1; }

build() {
  command -v go >/dev/null 2>&1 || die "go not found: the compose and promtool checks need Go 1.24 or newer (Debian: apt-get install golang)"
  mkdir -p "$dir"
  if [ ! -x "$compose_bin" ]; then
    echo "tools.sh: building compose-config (compose-go) into $dir" >&2
    (cd "$here/compose-config" && go build -trimpath -o "$compose_bin.tmp" .) && mv "$compose_bin.tmp" "$compose_bin"
  fi
  if [ ! -x "$prom_bin" ]; then
    echo "tools.sh: building promtool (Prometheus 3.5.0) into $dir (once: about 2 GB of modules, minutes)" >&2
    (cd "$here/promtool" && go build -trimpath -o "$prom_bin.tmp" github.com/prometheus/prometheus/cmd/promtool) \
      && mv "$prom_bin.tmp" "$prom_bin"
  fi
}

build_ghz() {
  command -v go >/dev/null 2>&1 || die "go not found: the bench's rls phase needs Go 1.24 or newer to build ghz (Debian: apt-get install golang)"
  mkdir -p "$dir"
  if [ ! -x "$ghz_bin" ]; then
    echo "tools.sh: building ghz (the gRPC load generator) into $dir" >&2
    (cd "$here/ghz" && go build -trimpath -o "$ghz_bin.tmp" github.com/bojand/ghz/cmd/ghz) && mv "$ghz_bin.tmp" "$ghz_bin"
  fi
  echo "$ghz_bin"
}

print() {
  [ -x "$compose_bin" ] && echo "COMPOSE_CONFIG=$compose_bin"
  [ -x "$prom_bin" ] && echo "PROMTOOL=$prom_bin"
  return 0
}

case "${1:-}" in
  build) build; print ;;
  env) print ;;
  ghz) build_ghz ;;
  *) die "usage: tools.sh build|env|ghz" ;;
esac
