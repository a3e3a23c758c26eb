#!/usr/bin/env bash
# `make test-debs`: the packages of NOOP's package corpus and the dependencies this
# machine lacks, downloaded once into DIR with a flat repository's Packages and Release
# (served on loopback by tests/test_packages*.py). Kept between runs: nothing is
# downloaded while DIR/corpus.list names the same packages.
set -euo pipefail
dir=$1
shift
want="$*"
if [[ -f $dir/corpus.list && $(cat "$dir/corpus.list") == "$want" && -f $dir/Release ]]; then
    exit 0
fi
command -v apt-get >/dev/null || { echo "no apt-get: the package tests will skip"; exit 0; }
[[ $(id -u) == 0 ]] || { echo "error: make test-debs needs root (apt-get)"; exit 1; }
command -v dpkg-scanpackages >/dev/null || apt-get install -y -qq dpkg-dev >/dev/null
mkdir -p "$dir"
cd "$dir"
apt-get update -qq
# What an install of them would fetch here (apt's own cache aside, whose files it would
# not fetch): each NAME_VERSION_ARCH.deb, as NAME=VERSION.
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
mkdir "$empty/partial"
apt-get install --print-uris -qq -y --no-install-recommends -o Dir::Cache::archives="$empty/" "$@" |
    awk '{print $2}' | sed -e 's/%3a/:/' -e 's/\.deb$//' |
    awk -F_ '{print $1 "=" $2}' >wanted.txt
missing=()
while read -r nv; do
    n=${nv%%=*} v=${nv#*=}
    compgen -G "${n}_${v/:/%3a}_*.deb" >/dev/null || missing+=("$nv")
done <wanted.txt
((${#missing[@]} == 0)) || apt-get download -q "${missing[@]}"
dpkg-scanpackages -m . /dev/null >Packages 2>/dev/null
{
    echo "Origin: disco-tests"
    echo "Label: disco-tests"
    echo "SHA256:"
    printf ' %s %s Packages\n' "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)"
} >Release
echo "$want" >corpus.list
