#!/bin/bash
# Names listed with ls are parameter segments, checked ([A-Za-z0-9_.-]): no blank, no glob.
# tr maps each separator to a newline on purpose.
# shellcheck disable=SC2012,SC2045,SC2020
# disco ball "groups": local groups as parameters groups/NAME/... say (README.md).
set -euo pipefail
ball=groups
P="/var/disco/parameters/$DISCO_NODE/parameters/$ball"
KNOWN="state gid members"
err=0
bad() { echo "error: $ball: $*" >&2; err=1; }
val() { if [ -f "$P/$1" ]; then cat "$P/$1"; fi; }
has() { [ -f "$P/$1" ]; }
words() { tr ', \t' '\n\n\n' | sed '/^$/d' | LC_ALL=C sort -u; }  # a list, one per line
# The users ball runs after this one (requires: before users), from users/NAME/...
U="/var/disco/parameters/$DISCO_NODE/parameters/users"
uval() { if [ -f "$U/$1" ]; then cat "$U/$1"; fi; }
is_user() { awk -F: -v n="$1" '$1 == n { f = 1 } END { exit !f }' /etc/passwd; }
naming() {  # the users (not absent) whose users/NAME/groups names group $1
  local u list
  [ -d "$U" ] || return 0
  for u in $(ls -A "$U"); do
    if [ -f "$U/$u/groups" ] && [ "$(uval "$u/state")" != absent ]; then
      list=$(uval "$u/groups" | words)
      if grep -qxF -- "$1" <<<"$list"; then echo "$u"; fi
    fi
  done
}

[ -e "$P" ] || exit 0
[ -d "$P" ] || { echo "error: $ball: parameter '$ball' must be a map: $ball/NAME/..." >&2; exit 1; }
names=$(ls -A "$P" | LC_ALL=C sort)
NAME='^[a-z_][a-z0-9_-]{0,31}$'

# Every entry is checked before anything changes.
for g in $names; do
  if ! [[ $g =~ $NAME ]]; then bad "'$g' is not a group name (a-z 0-9 _ -, at most 32)"; continue; fi
  if ! [ -d "$P/$g" ]; then bad "$g: must be a map: $ball/$g/{${KNOWN// /,}}"; continue; fi
  for k in $(ls -A "$P/$g"); do
    [[ " $KNOWN " == *" $k "* ]] || bad "$g: unknown parameter '$k'; known: $KNOWN"
  done
  case "$(val "$g/state")" in
    "" | present | absent) ;;
    *) bad "$g/state: '$(val "$g/state")' is not present or absent" ;;
  esac
  if has "$g/gid" && ! [[ $(val "$g/gid") =~ ^[0-9]+$ ]]; then bad "$g/gid: '$(val "$g/gid")' is not a number"; fi
  for m in $(val "$g/members" | words); do
    if ! [[ $m =~ $NAME ]]; then
      bad "$g/members: '$m' is not a user name"
    elif [ "$(val "$g/state")" = absent ]; then
      continue
    elif [ "$(uval "$m/state")" = absent ]; then
      bad "$g/members: '$m' is to be removed (users/$m/state is absent)"
    elif ! is_user "$m" && ! [ -d "$U/$m" ]; then
      bad "$g/members: no user '$m' in /etc/passwd; make it with the users ball (users/$m/...)"
    fi
  done
  if [ "$(val "$g/state")" = absent ]; then
    for u in $(naming "$g"); do bad "$g/state: absent, but users/$u/groups names it"; done
  fi
done
[ "$err" = 0 ] || exit 1

for g in $names; do
  entry=$(awk -F: -v g="$g" '$1 == g' /etc/group)
  if [ "$(val "$g/state")" = absent ]; then
    if [ -n "$entry" ]; then groupdel "$g"; echo "groups: removed $g"; fi
    continue
  fi
  if [ -z "$entry" ]; then
    if has "$g/gid"; then groupadd --gid "$(val "$g/gid")" "$g"; else groupadd "$g"; fi
    echo "groups: created $g"
  elif has "$g/gid" && [ "$(cut -d: -f3 <<<"$entry")" != "$(val "$g/gid")" ]; then
    groupmod --gid "$(val "$g/gid")" "$g"
    echo "groups: changed the gid of $g to $(val "$g/gid")"
  fi
  if has "$g/members"; then
    now=$(awk -F: -v g="$g" '$1 == g { print $4 }' /etc/group | words)
    # Its members and the users whose users/NAME/groups names it, as the users ball has
    # them; one the users ball makes later in this dance joins the group as it is made.
    want=$(for m in $({ val "$g/members"; naming "$g"; } | words); do
      if is_user "$m"; then echo "$m"; fi
    done)
    if [ "$now" != "$want" ]; then
      gpasswd --members "$(paste -sd, <<<"$want")" "$g" >/dev/null
      echo "groups: members of $g: $(paste -sd' ' <<<"$want")"
    fi
  fi
done
