#!/usr/bin/env bash
# Cross-builds the agent for ARM gateways with Debian's cross compilers and
# runs the binary under qemu-user in the system test
# demo/tests/modbus_agent_process.rs: each starts from a config file, polls
# a pymodbus TCP device and forwards exact partials to a collector on the
# host (all targets side by side in one test run). Prints the stripped
# binary's size per target.
# Usage: scripts/cross.sh [aarch64|armv7]...   (default: both)
# CROSS_PROFILE=dev builds without optimisation (what CI does: it proves the
# binary runs on the target in less build time; sizes are for release).
# CROSS_CARGO_FLAGS adds cargo flags to the build, e.g. --no-default-features
# (CI builds the ARM agents without the OPC UA input, which is target-
# independent Rust tested on the host, to keep the cross build short).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armv7)

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
profile="${CROSS_PROFILE:-release}"
[ "$profile" = dev ] && out=debug || out="$profile"
triples=() bins=() runners=()
for t in "${targets[@]}"; do
  case "$t" in
  aarch64) triple=aarch64-unknown-linux-gnu qemu=qemu-aarch64 sysroot=/usr/aarch64-linux-gnu ;;
  armv7) triple=armv7-unknown-linux-gnueabihf qemu=qemu-arm sysroot=/usr/arm-linux-gnueabihf ;;
  *) echo "unknown target $t (aarch64, armv7)" >&2; exit 2 ;;
  esac
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
  triples+=("$triple")
  bins+=("$target_dir/$triple/$out/tributary-agent")
  runners+=("$qemu -L $sysroot")
done
# One cargo run builds every target (their build graphs share the host's
# build scripts and proc macros and keep both cores busy).
start=$(date +%s)
read -r -a extra <<<"${CROSS_CARGO_FLAGS:-}"
cargo build -q --profile "$profile" -p tributary-agent "${extra[@]}" "${triples[@]/#/--target=}"
echo "built ${triples[*]} ($profile) in $(($(date +%s) - start)) s"
for i in "${!triples[@]}"; do
  case "${triples[$i]}" in
  aarch64-*) strip=aarch64-linux-gnu-strip ;;
  armv7-*) strip=arm-linux-gnueabihf-strip ;;
  esac
  bin="${bins[$i]}"
  "$strip" -o "$bin.stripped" "$bin"
  echo "${triples[$i]}: stripped agent ($profile) $(stat -c %s "$bin.stripped") bytes"
  ${runners[$i]} "$bin" --version
done
# One test run: the agents side by side, each under its qemu-user.
(IFS=';'
  TRIBUTARY_AGENT_BIN="${bins[*]}" TRIBUTARY_AGENT_RUNNER="${runners[*]}" \
    cargo test -q -p tributary-demo --test modbus_agent_process)
