#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "packages": packages/install and packages/remove lists, for apt or dnf
# (README.md). What is installed already, or absent already, is left alone.
set -euo pipefail
ball=packages
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="install remove"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }
words() { tr ', \t' '\n\n\n' | sed '/^$/d' | LC_ALL=C sort -u; }  # a list, one per line

[ -e "$P" ] || exit 0
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/{install,remove}" >&2; exit 1; }
for k in $(ls -A "$P"); do
  [[ " $KNOWN " == *" $k "* ]] || bad "unknown parameter '$k'; known: $KNOWN"
  [ -f "$P/$k" ] || bad "$k: must be a list of package names, not a map"
done
[ "$err" = 0 ] || exit 1
install=$(val install | words)
remove=$(val remove | words)
for p in $install $remove; do
  [[ $p =~ ^[A-Za-z0-9][A-Za-z0-9+._:-]*$ ]] || bad "'$p' is not a package name"
done
for p in $(LC_ALL=C comm -12 <(echo "$install") <(echo "$remove")); do
  bad "'$p' is in both install and remove"
done
if command -v dpkg-query >/dev/null && [ -d /var/lib/dpkg ]; then
  manager=apt
  installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }
elif command -v rpm >/dev/null && command -v dnf >/dev/null; then
  manager=dnf
  installed() { rpm -q --quiet "$1"; }
else
  bad "no package manager: neither apt (dpkg) nor dnf (rpm) is on this machine"
fi
[ "$err" = 0 ] || exit 1

missing=() present=()
for p in $install; do installed "$p" || missing+=("$p"); done
for p in $remove; do ! installed "$p" || present+=("$p"); done
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
  echo "packages: installing ${missing[*]}"
  case $manager in
    apt) apt-get install -y -q --no-install-recommends -- "${missing[@]}" ;;
    dnf) dnf install -y -q -- "${missing[@]}" ;;
  esac
fi
if [ ${#present[@]} -gt 0 ]; then
  echo "packages: removing ${present[*]}"
  case $manager in
    apt) apt-get remove -y -q -- "${present[@]}" ;;
    dnf) dnf remove -y -q -- "${present[@]}" ;;
  esac
fi
