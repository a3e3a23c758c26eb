#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "hosts": entries hosts/ID/{address,names} (README.md), kept in a block of
# /etc/hosts between two marker lines; the rest of the file is left as it is.
set -euo pipefail
ball=hosts
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="address names"
BEGIN="# BEGIN disco hosts: from the parameters hosts/, changes here are undone"
END="# END disco hosts"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }

ids=""
if [ -e "$P" ]; then
  [ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/ID/..." >&2; exit 1; }
  ids=$(ls -A "$P" | LC_ALL=C sort)
fi
OCTET='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
HOST='^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'
for id in $ids; do
  if ! [ -d "$P/$id" ]; then bad "$id: must be a map: $ball/$id/{address,names}"; continue; fi
  for k in $(ls -A "$P/$id"); do
    [[ " $KNOWN " == *" $k "* ]] || bad "$id: unknown parameter '$k'; known: $KNOWN"
  done
  address=$(val "$id/address")
  [[ $address =~ ^($OCTET\.){3}$OCTET$ || ($address =~ ^[0-9A-Fa-f:.]+$ && $address == *:*:*) ]] ||
    bad "$id/address: '$address' is not an IPv4 or IPv6 address"
  names=$(val "$id/names" | tr ',\n' '  ')
  [ -n "${names// /}" ] || bad "$id/names: give at least one host name"
  for name in $names; do
    [[ $name =~ $HOST ]] || bad "$id/names: '$name' is not a host name"
  done
done
[ "$err" = 0 ] || exit 1

block=$(mktemp) tmp=$(mktemp)
trap 'rm -f "$block" "$tmp"' EXIT
if [ -n "$ids" ]; then
  echo "$BEGIN" >"$block"
  for id in $ids; do
    echo "$(val "$id/address") $(val "$id/names" | tr ',\n' '  ' | tr -s ' ' | sed 's/ $//')" >>"$block"
  done
  echo "$END" >>"$block"
fi
touch /etc/hosts
# The block goes where it was (or at the end); everything else stays.
awk -v begin="$BEGIN" -v end="$END" -v blockfile="$block" '
  function put() { while ((getline l < blockfile) > 0) print l; placed = 1 }
  $0 == begin { skip = 1; put(); next }
  skip && $0 == end { skip = 0; next }
  !skip { print }
  END { if (!placed) put() }' /etc/hosts >"$tmp"
if ! cmp -s "$tmp" /etc/hosts; then
  cat "$tmp" >/etc/hosts
  echo "hosts: wrote /etc/hosts"
fi
