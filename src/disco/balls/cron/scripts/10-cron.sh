#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "cron": jobs cron/ID/{schedule,command,user,state} (README.md), each the file
# /etc/cron.d/disco-ID. A disco-* file whose job left the parameters is removed.
set -euo pipefail
ball=cron
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="schedule command user state"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }

ids=""
if [ -e "$P" ]; then
  [ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/ID/..." >&2; exit 1; }
  ids=$(ls -A "$P" | LC_ALL=C sort)
fi
FIELD='[A-Za-z0-9*/,-]+'
for id in $ids; do
  # run-parts, and so cron, ignores file names with a dot.
  if ! [[ $id =~ ^[A-Za-z0-9_-]+$ ]]; then bad "'$id' is not a job name (A-Z a-z 0-9 _ -, no dot)"; continue; fi
  if ! [ -d "$P/$id" ]; then bad "$id: must be a map: $ball/$id/{${KNOWN// /,}}"; continue; fi
  for k in $(ls -A "$P/$id"); do
    [[ " $KNOWN " == *" $k "* ]] || bad "$id: unknown parameter '$k'; known: $KNOWN"
  done
  case "$(val "$id/state")" in "" | present | absent) ;; *) bad "$id/state: '$(val "$id/state")' is not present or absent" ;; esac
  [ "$(val "$id/state")" != absent ] || continue
  schedule=$(val "$id/schedule")
  [[ $schedule =~ ^(${FIELD}[[:space:]]+){4}${FIELD}$ || $schedule =~ ^@(reboot|yearly|annually|monthly|weekly|daily|midnight|hourly)$ ]] ||
    bad "$id/schedule: '$schedule' is not five cron fields (*/5 * * * *) or @daily and the like"
  command=$(val "$id/command")
  [[ -n $command && $command != *$'\n'* ]] || bad "$id/command: must be one line, not empty"
  user=$(val "$id/user")
  [[ -z $user || $user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || bad "$id/user: '$user' is not a user name"
done
[ "$err" = 0 ] || exit 1

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
wanted=" "
for id in $ids; do
  file=/etc/cron.d/disco-$id
  [ "$(val "$id/state")" != absent ] || continue
  wanted+="disco-$id "
  user=$(val "$id/user")
  cat >"$tmp" <<JOB
# Written by the disco ball cron from the parameters cron/$id; changes here are undone.
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin
$(val "$id/schedule") ${user:-root} $(val "$id/command")
JOB
  if ! cmp -s "$tmp" "$file"; then
    mkdir -p /etc/cron.d
    cat "$tmp" >"$file"
    chmod 644 "$file"
    echo "cron: wrote $file"
  fi
done
for file in /etc/cron.d/disco-*; do
  [ -f "$file" ] || continue
  [[ $wanted == *" ${file##*/} "* ]] || { rm -f "$file"; echo "cron: removed $file"; }
done
