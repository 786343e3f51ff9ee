#!/usr/bin/env bash
# Installs an eddy .deb built by build-deb.sh on this machine, checks what
# it installed, and purges it again:
#
#   deploy/debian/package-test.sh target/debian/eddy_0.1.0-1_amd64.deb
#
# Checks: dpkg -i succeeds; /usr/bin/eddy runs; `eddy check
# /etc/eddy/eddy.toml` passes; the service's user exists and is
# unprivileged; /var/lib/eddy belongs to it with owner-only access;
# /etc/eddy/eddy.toml is a conffile; `systemd-analyze verify` accepts the
# unit and its hardening is in place; a changed conffile survives a
# reinstall; dpkg --purge removes the package, its state and its user.
#
# Run as root. It refuses to run where an eddy package is already
# installed (it would replace it). Where systemd runs, the service is not
# started during the test (policy-rc.d), so it does not bind the default
# ports of a gateway the user may run.
set -euo pipefail
deb=${1:?usage: package-test.sh PATH.deb}
[ "$(id -u)" = 0 ] || { echo "package-test.sh: run as root (dpkg -i)"; exit 1; }
if dpkg-query -W -f='${Status}' eddy 2>/dev/null | grep -q "ok installed"; then
  echo "package-test.sh: an eddy package is already installed here; remove it first"
  exit 1
fi

policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
cleanup() {
  dpkg --purge eddy >/dev/null 2>&1 || true
  [ -z "$made_policy" ] || rm -f "$policy"
}
trap cleanup EXIT

fail() { echo "package-test.sh: $*"; exit 1; }

dpkg -i "$deb"
eddy --version
eddy check /etc/eddy/eddy.toml

getent passwd eddy >/dev/null || fail "no user eddy"
[ "$(id -u eddy)" -lt 1000 ] || fail "eddy is not a system user"
[ "$(getent passwd eddy | cut -d: -f7)" = /usr/sbin/nologin ] || fail "eddy has a login shell"
[ "$(stat -c '%U %a' /var/lib/eddy)" = "eddy 700" ] || fail "/var/lib/eddy: $(stat -c '%U %a' /var/lib/eddy)"
grep -qx /etc/eddy/eddy.toml /var/lib/dpkg/info/eddy.conffiles || fail "eddy.toml is not a conffile"

unit=$(dpkg -L eddy | grep '/systemd/system/eddy.service$') || fail "no eddy.service"
systemd-analyze verify "$unit"
# systemd's exposure rating of the unit (0 safest, 10 unprotected).
exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for eddy.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || fail "exposure ${exposure:-unknown} above 2.0"
for setting in User=eddy ProtectSystem=strict StateDirectory=eddy NoNewPrivileges=yes Restart=on-failure; do
  grep -qx "$setting" "$unit" || fail "$unit lacks $setting"
done

# A user's change to the conffile is kept when the package is installed again.
echo '# changed by the administrator' >>/etc/eddy/eddy.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q '^# changed by the administrator$' /etc/eddy/eddy.toml || fail "conffile change lost"
eddy check /etc/eddy/eddy.toml

dpkg --purge eddy
[ ! -e /usr/bin/eddy ] || fail "/usr/bin/eddy left after purge"
[ ! -e /var/lib/eddy ] || fail "/var/lib/eddy left after purge"
! getent passwd eddy >/dev/null || fail "user eddy left after purge"
echo "package-test.sh: $deb ok"
