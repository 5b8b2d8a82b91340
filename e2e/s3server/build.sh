#!/usr/bin/env bash
# Builds the tests' S3-compatible server (main.go: gofakes3 with its bolt backend) into a
# cache outside the repository, keyed by a hash of this module's sources and `go version`;
# a second run with the same key is a no-op. Prints the binary's path on its last line.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SHARDWRIGHT_CACHE:-$HOME/.cache/shardwright}
export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE:-$CACHE/go/build}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

SOURCES=$(cd "$HERE" && cat go.mod go.sum main.go | sha256sum | cut -c1-16)
BIN="$CACHE/s3server/${SOURCES}_$(go env GOVERSION)/s3server"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$(dirname "$BIN")"
(cd "$HERE" && go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
echo "$BIN"
