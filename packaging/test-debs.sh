#!/usr/bin/env bash
# Installs the agent's and the collector's .deb into a throw-away root and
# starts each unit's command line from there (no chroot, no container):
#  - dpkg-deb -x lays out the files; the checks: binary, unit, conffile
#    (listed in DEBIAN/conffiles), nothing else outside /usr, /lib, /etc;
#  - the postinst runs with DPKG_ROOT set (as dpkg runs it for an install
#    into another root): it must create the system user and group
#    "tributary" in the root's /etc/passwd and /etc/group (copied from the
#    host), /var/lib/tributary/<c> owned by them (0750) and make the config
#    root:tributary 0640;
#  - the unit's ExecStartPre/ExecStart lines are run as written, with the
#    root's prefix put before /usr/bin and /etc/tributary, as the tributary
#    user's uid/gid (setpriv); data_dir (absolute in the packaged config)
#    is pointed into the root by TRIBUTARY_DATA_DIR and the HTTP port to a
#    free one by TRIBUTARY_HTTP_LISTEN, the documented overrides. Each must
#    answer 200 on /health/live and create its database in the data
#    directory, then stop cleanly on SIGTERM.
# Usage: packaging/test-debs.sh AGENT.deb COLLECTOR.deb
set -euo pipefail
agent_deb=$1
collector_deb=$2
root=$(mktemp -d)
# mktemp makes it 0700: the tributary user must reach into it, as into /.
chmod 0755 "$root"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$root/etc"
for f in passwd group shadow gshadow login.defs; do
  [ -e "/etc/$f" ] && cp -p "/etc/$f" "$root/etc/$f"
done
if grep -q '^tributary:' "$root/etc/passwd"; then
  sed -i '/^tributary:/d' "$root/etc/passwd" "$root/etc/shadow"
  sed -i '/^tributary:/d' "$root/etc/group" "$root/etc/gshadow"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install_one() { # component deb
  local c=$1 deb=$2 pkg="tributary-$1"
  dpkg-deb -x "$deb" "$root"
  dpkg-deb -e "$deb" "$root/DEBIAN-$c"
  [ "$(dpkg-deb -f "$deb" Package)" = "$pkg" ] || fail "$deb is not $pkg"
  [ -x "$root/usr/bin/$pkg" ] || fail "no /usr/bin/$pkg"
  [ -f "$root/lib/systemd/system/$pkg.service" ] || fail "no unit"
  [ -f "$root/etc/tributary/$c.toml" ] || fail "no /etc/tributary/$c.toml"
  grep -qx "/etc/tributary/$c.toml" "$root/DEBIAN-$c/conffiles" || fail "config is no conffile"
  grep -q "^data_dir = \"/var/lib/tributary/$c\"$" "$root/etc/tributary/$c.toml" ||
    fail "packaged config does not name /var/lib/tributary/$c"
  DPKG_ROOT="$root" DPKG_MAINTSCRIPT_PACKAGE="$pkg" sh "$root/DEBIAN-$c/postinst" configure
  local uid gid
  uid=$(awk -F: '$1 == "tributary" { print $3 }' "$root/etc/passwd")
  gid=$(awk -F: '$1 == "tributary" { print $3 }' "$root/etc/group")
  [ -n "$uid" ] && [ -n "$gid" ] || fail "postinst made no tributary user/group"
  [ "$(stat -c '%u:%g %a' "$root/var/lib/tributary/$c")" = "$uid:$gid 750" ] ||
    fail "data dir: $(stat -c '%u:%g %a' "$root/var/lib/tributary/$c")"
  [ "$(stat -c '%u:%g %a' "$root/etc/tributary/$c.toml")" = "0:$gid 640" ] ||
    fail "config: $(stat -c '%u:%g %a' "$root/etc/tributary/$c.toml")"
  # The unit's command lines, with the root's prefix.
  local unit="$root/lib/systemd/system/$pkg.service" port line
  port=$(free_port)
  export TRIBUTARY_DATA_DIR="$root/var/lib/tributary/$c"
  export TRIBUTARY_HTTP_LISTEN="127.0.0.1:$port"
  run_as() { setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
  prefixed() { sed -e "s|/usr/bin/|$root/usr/bin/|g" -e "s|/etc/tributary/|$root/etc/tributary/|g"; }
  while IFS= read -r line; do
    # shellcheck disable=SC2046 # the unit's words, as systemd splits them
    run_as $(echo "$line" | prefixed) || fail "$pkg: ExecStartPre failed: $line"
  done < <(sed -n 's/^ExecStartPre=//p' "$unit")
  line=$(sed -n 's/^ExecStart=//p' "$unit")
  [ -n "$line" ] || fail "$pkg: no ExecStart"
  # Not through run_as: $! must be the agent itself (setpriv execs it).
  # shellcheck disable=SC2046
  setpriv --reuid="$uid" --regid="$gid" --clear-groups $(echo "$line" | prefixed) \
    >"$root/$c.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local ok=""
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ok" ] || { cat "$root/$c.log" >&2; fail "$pkg did not serve /health/live"; }
  local db
  db=$(find "$root/var/lib/tributary/$c" -maxdepth 1 -name '*.db' | head -n 1)
  [ -n "$db" ] || fail "$pkg made no database in its data dir"
  [ "$(stat -c '%u' "$db")" = "$uid" ] || fail "$pkg's database is not the tributary user's"
  kill -TERM "$pid"
  wait "$pid" || fail "$pkg did not stop cleanly on SIGTERM (exit $?)"
  unset TRIBUTARY_DATA_DIR TRIBUTARY_HTTP_LISTEN
  echo "ok: $pkg installs, creates its user and data dir, and its unit's command runs"
}

install_one agent "$agent_deb"
install_one collector "$collector_deb"
echo "2 passed, 0 failed"
