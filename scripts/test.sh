#!/usr/bin/env bash
# The one test command (README): installs what the tests need, then runs them.
#
# Tests start their own mosquitto / PostgreSQL / Chromium processes on
# 127.0.0.1 with free ports; this script only makes sure the programs exist.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# The Modbus RTU tests run their serial line over a socat pty pair.
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
# The export sinks are tested against real metrics databases (testkit's
# metricsdb): Prometheus (remote write, native histograms), VictoriaMetrics
# and InfluxDB 1.x.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v victoria-metrics >/dev/null 2>&1 || need_apt+=(victoria-metrics)
command -v influxd >/dev/null 2>&1 || need_apt+=(influxdb)
# The firmware's end-to-end test boots its image on an emulated Cortex-M.
command -v qemu-system-arm >/dev/null 2>&1 || need_apt+=(qemu-system-arm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The sketch-index tests compare bucket indices with the OpenTelemetry SDK's
# mapping (shared/tests/sketch_index.rs). A Debian python3 refuses a plain
# pip install (PEP 668), hence the second form.
if ! python3 -c 'import opentelemetry.sdk' >/dev/null 2>&1; then
  echo "installing: opentelemetry-sdk (PyPI)"
  python3 -m pip install -q opentelemetry-sdk 2>/dev/null ||
    python3 -m pip install -q --break-system-packages opentelemetry-sdk
fi
# The Modbus tests poll device simulators from PyPI's pymodbus
# (testkit/py/modbus_sim.py); its RTU server needs pyserial, which pymodbus
# installs only with its `serial` extra.
if ! python3 -c 'import pymodbus, serial' >/dev/null 2>&1; then
  echo "installing: pymodbus with pyserial (PyPI)"
  python3 -m pip install -q 'pymodbus[serial]>=3.16,<4' 2>/dev/null ||
    python3 -m pip install -q --break-system-packages 'pymodbus[serial]>=3.16,<4'
fi
# The OPC UA test serves its variables from PyPI's asyncua
# (testkit/py/opcua_sim.py).
if ! python3 -c 'import asyncua' >/dev/null 2>&1; then
  echo "installing: asyncua (PyPI)"
  python3 -m pip install -q 'asyncua>=1.1,<3' 2>/dev/null ||
    python3 -m pip install -q --break-system-packages 'asyncua>=1.1,<3'
fi
# The OTLP sink's test receiver decodes with OpenTelemetry's own generated
# code (collector/tests/otlp_receiver.py).
if ! python3 -c 'import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2' >/dev/null 2>&1; then
  echo "installing: opentelemetry-proto (PyPI)"
  python3 -m pip install -q opentelemetry-proto 2>/dev/null ||
    python3 -m pip install -q --break-system-packages opentelemetry-proto
fi
# Debian starts services on install where it can; the tests run their own.
service postgresql stop >/dev/null 2>&1 || true
service mosquitto stop >/dev/null 2>&1 || true
for s in prometheus victoria-metrics influxdb; do service "$s" stop >/dev/null 2>&1 || true; done

# The firmware and the core must build without std.
cargo build -q -p tributary-core --no-default-features
cargo build -q -p tributary-firmware --no-default-features
# The freestanding firmware image (no_std, no_main, own _start, no libc; see
# firmware/README.md) must link, and its built-in checks must pass (exit 0).
freestanding_target="${CARGO_TARGET_DIR:-$PWD/target}/freestanding"
(cd firmware/freestanding &&
  cargo rustc -q --release --target-dir "$freestanding_target" -- \
    -C link-arg=-nostartfiles -C link-arg=-nostdlib -C link-arg=-static \
    -C relocation-model=static -C link-arg=-Wl,--no-eh-frame-hdr \
    -C link-arg=unwind.ld)
"$freestanding_target/release/tributary-firmware-freestanding"
# Its code budget (firmware/README.md): .text + .rodata + build-id note ≤ 16 KiB.
code_bytes=$(size -A "$freestanding_target/release/tributary-firmware-freestanding" |
  awk '$1 == ".text" || $1 == ".rodata" || $1 == ".note.gnu.build-id" { s += $2 } END { print s }')
if [ "$code_bytes" -gt 16384 ]; then
  echo "freestanding firmware image: $code_bytes B of code, over the 16 KiB budget" >&2
  exit 1
fi

# The complete protocol image (firmware/qemu: Hello, TimeSync, summaries,
# acks over a UART) for a Cortex-M0+ and a Cortex-M4F; its code budget
# (firmware/README.md): .text + .rodata ≤ 16 KiB on each.
qemu_target="${CARGO_TARGET_DIR:-$PWD/target}/qemu"
# Each with its profile: the M0+ image for size (release), the M4 image's
# own crate for speed (profile speed, firmware/qemu/Cargo.toml).
for build in thumbv6m-none-eabi:release thumbv7em-none-eabihf:speed; do
  target=${build%%:*} profile=${build##*:}
  if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  fi
  (cd firmware/qemu && cargo build -q --profile "$profile" --target "$target" --target-dir "$qemu_target")
  image="$qemu_target/$target/$profile/tributary-firmware-qemu"
  code_bytes=$(size -A "$image" | awk '$1 == ".text" || $1 == ".rodata" { s += $2 } END { print s }')
  echo "firmware image $target ($profile): $code_bytes B of .text + .rodata (budget 16384)"
  if [ "$code_bytes" -gt 16384 ]; then
    echo "firmware image $target: $code_bytes B of code, over the 16 KiB budget" >&2
    exit 1
  fi
done

# The board-support example (firmware/boards/rp2040-pico: a Pico with an
# SHT3x and a UART to the gateway, on rp2040-hal) must build for its target.
(cd firmware/boards/rp2040-pico &&
  cargo build -q --release --target-dir "${CARGO_TARGET_DIR:-$PWD/../../../target}/boards")

# Decoders get a short burst of extra fuzzing in CI.
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
cargo test --workspace --all-targets "$@"

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

# Gateways (issue #14; packaging/README.md). The Debian packages are built
# from the dev profile (a release build of agent and collector would add
# ~10 min; the package's layout, maintainer scripts and unit are what the
# install test proves) and installed into a throw-away root. The agent is
# cross-built for aarch64 and armv7 (dev profile, one cargo run for both)
# and both binaries run side by side under qemu-user in one run of the
# Modbus system test (scripts/cross.sh); without the OPC UA input, whose
# code is target-independent and tested on the host (opcua_e2e).
mapfile -t debs < <(packaging/build-debs.sh --profile dev)
packaging/test-debs.sh "${debs[@]}"
CROSS_PROFILE=dev CROSS_CARGO_FLAGS=--no-default-features scripts/cross.sh aarch64 armv7

# The fault campaign, short (demo/src/soak; the long run is in its docs):
# real agent, collector and mosquitto processes killed with kill -9, broker
# restarts, outages, hostile input and (as root) a full disk; every window
# judged by the oracle. The tests above built the binaries.
soak_args=(--rounds 18)
[ "$(id -u)" = 0 ] || soak_args+=(--no-disk)
"$target_dir/debug/tributary-soak" "${soak_args[@]}"

# A short burst of coverage-guided fuzzing of every decoder that takes bytes
# from outside (fuzz/README.md): each target from its seeds, 10 s each. No
# sanitizer (`-s none`: the code forbids `unsafe`), debug assertions and
# overflow checks on (`-a`). Stable Rust runs cargo-fuzz with RUSTC_BOOTSTRAP.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
(
  cd fuzz
  export RUSTC_BOOTSTRAP=1
  cargo run -q --release --target-dir "$target_dir" -p seeds
  for t in $(cargo fuzz list); do
    echo "fuzzing $t for ${FUZZ_SECONDS:-10} s"
    log="$target_dir/fuzz-$t.log"
    # libFuzzer exits non-zero on a crash or a hang (its input is kept in
    # artifacts/<target>/).
    if ! cargo fuzz run -s none -a --target-dir "$target_dir" "$t" "corpus/$t" -- \
      -max_total_time="${FUZZ_SECONDS:-10}" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
      tail -40 "$log" >&2
      echo "fuzz target $t failed (log: $log)" >&2
      exit 1
    fi
    grep -E '^stat::number_of_executed_units' "$log" || true
  done
)
