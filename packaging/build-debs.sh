#!/usr/bin/env bash
# Builds the Debian packages of the agent and the collector with cargo-deb
# (installed from crates.io if missing). The packaged configs are the
# documented ones in config/ with data_dir set to the package's data
# directory; they are made into packaging/build/ first. Extra arguments go
# to cargo deb (e.g. --target aarch64-unknown-linux-gnu). Prints the paths
# of the two .deb files, one a line, on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p packaging/build
for c in agent collector; do
  sed "s|^data_dir = .*|data_dir = \"/var/lib/tributary/$c\"|" "config/$c.toml" \
    >"packaging/build/$c.toml"
  grep -q "^data_dir = \"/var/lib/tributary/$c\"$" "packaging/build/$c.toml"
done
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing: cargo-deb (crates.io)" >&2
  cargo install -q cargo-deb --locked >&2
fi
for c in agent collector; do
  cargo deb -q -p "tributary-$c" "$@" | tail -n 1
done
