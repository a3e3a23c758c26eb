#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "sysctl": kernel parameters sysctl/KEY = VALUE (README.md), written to
# /etc/sysctl.d/90-disco.conf for the next boot and applied now where the running value
# differs. Applying reaches the kernel, outside the dry run: NOOP says what it would run.
set -euo pipefail
ball=sysctl
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
CONF=/etc/sysctl.d/90-disco.conf
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }

[ -e "$P" ] || { [ ! -f "$CONF" ] || { rm -f "$CONF"; echo "sysctl: removed $CONF"; }; exit 0; }
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/KEY = VALUE" >&2; exit 1; }
keys=$(ls -A "$P" | LC_ALL=C sort)
for k in $keys; do
  if ! [[ $k =~ ^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$ ]]; then bad "'$k' is not a kernel parameter name (like net.ipv4.ip_forward)"; continue; fi
  if [ -d "$P/$k" ]; then bad "$k: must be a value, not a map"; continue; fi
  [ -f "/proc/sys/${k//.//}" ] || bad "$k: this kernel has no such parameter (no /proc/sys/${k//.//})"
  [[ $(cat "$P/$k") != *$'\n'* && -n $(cat "$P/$k") ]] || bad "$k: the value must be one line, not empty"
done
[ "$err" = 0 ] || exit 1

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
  echo "# Written by the disco ball sysctl from the parameters sysctl/; changes here are undone."
  for k in $keys; do echo "$k = $(cat "$P/$k")"; done
} >"$tmp"
if ! cmp -s "$tmp" "$CONF"; then
  mkdir -p "${CONF%/*}"
  cat "$tmp" >"$CONF"
  chmod 644 "$CONF"
fi
for k in $keys; do
  want=$(tr -s ' \t' '  ' <"$P/$k")
  now=$(tr -s ' \t' '  ' <"/proc/sys/${k//.//}")
  [ "$now" != "$want" ] || continue
  if [ -n "${NOOP:-}" ]; then
    echo "warning: Would execute : sysctl -w $k=$want" >&2
  else
    sysctl -q -w "$k=$want"
  fi
done
