#!/usr/bin/env bash
# The agent's memory with many Modbus registers: a (release) agent binary
# polls a pymodbus TCP device of REGISTERS adjacent uint16 holding
# registers every INTERVAL_MS, windows in its SQLite store, uplink off;
# prints its VmRSS every 10 s and its peak (VmHWM) after SECONDS, beside
# the peak of the same agent polling one register for as long (baseline).
# Usage: scripts/agent-rss.sh [AGENT_BIN] [REGISTERS] [SECONDS] [INTERVAL_MS]
# (defaults: target/release/tributary-agent, 1000, 60, 1000). Build first:
#   cargo build --release -p tributary-agent
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/tributary-agent}"
n="${2:-1000}" secs="${3:-60}" interval="${4:-1000}"
dir=$(mktemp -d)
sim="" agent=""
trap 'kill $sim $agent 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

# One run with REGS registers in $dir/$REGS; prints VmRSS every 10 s (when
# LOUD) and leaves the peak (VmHWM, kB) in $peak.
measure() {
  local regs=$1 loud=$2 d="$dir/$1" port a t
  mkdir -p "$d"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 - "$regs" >"$d/spec.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"unit": 1, "log": False,
                  "points": [{"metric": f"r{a}", "address": a, "type": "uint16"} for a in range(n)]}))
PY
  {
    printf 'agent_id = "rss"\ndata_dir = "%s/data"\n[uplink]\nenabled = false\n[http]\nlisten = ""\n' "$d"
    printf '[[modbus]]\nname = "plc"\ntcp = "127.0.0.1:%s"\ninterval_ms = %s\n' "$port" "$interval"
    for ((a = 0; a < regs; a++)); do printf '[[modbus.registers]]\nmetric = "r%d"\naddress = %d\n' "$a" "$a"; done
  } >"$d/agent.toml"
  python3 testkit/py/modbus_sim.py --tcp "$port" --spec "$d/spec.json" --log "$d/served.log" >"$d/sim.out" &
  sim=$!
  for _ in $(seq 100); do grep -q ready "$d/sim.out" 2>/dev/null && break; sleep 0.1; done
  "$bin" --config "$d/agent.toml" 2>"$d/agent.log" &
  agent=$!
  for ((t = 10; t <= secs; t += 10)); do
    sleep 10
    [ "$loud" = 1 ] && echo "t=${t}s VmRSS $(awk '/VmRSS/ {print $2, $3}' /proc/$agent/status)"
  done
  peak=$(awk '/VmHWM/ {print $2}' /proc/$agent/status)
  kill "$agent" "$sim" 2>/dev/null || true
  wait "$agent" "$sim" 2>/dev/null || true
  sim="" agent=""
}

# The baseline first: the same agent with one register, same time.
measure 1 0
base=$peak
measure "$n" 1
echo "$n registers every ${interval} ms for ${secs} s: peak RSS (VmHWM) $peak kB; with 1 register (baseline, same run) $base kB; difference $((peak - base)) kB"
