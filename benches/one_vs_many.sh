#!/bin/bash
# Registering one large file against many 1 MiB files of the same bytes (issue 9: a
# folder of one 8 GiB file must register no slower than 8,192 files of 1 MiB).
#
#   benches/one_vs_many.sh [GIB]     # default 8; needs 2 x GIB of disk in $TMPDIR
#
# Builds the release binaries, writes GIB GiB of random bytes as one file and as GIB x
# 1,024 files of 1 MiB, and registers each folder three times, without the hash cache and
# with the files in the page cache (so that the disk is not what is measured), three
# rounds alternating.
set -euo pipefail
gib=${1:-8}
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release
work=$(mktemp -d)
trap 'kill $idx 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/one" "$work/many"
head -c $((gib << 30)) /dev/urandom > "$work/one/big.bin"
split -b 1048576 -a 5 -d "$work/one/big.bin" "$work/many/part-"
"$bin/indexing-server" 127.0.0.1 0 > "$work/index.out" 2>&1 &
idx=$!
until grep -q listening "$work/index.out"; do :; done
port=$(head -1 "$work/index.out" | grep -o '[0-9]*$')
for d in one many one many one many; do
  rm -f "$work/$d/.peerdex-hashes"
  cat "$work/$d"/* > /dev/null
  start=$(date +%s.%N)
  echo register | "$bin/peer" 127.0.0.1 "$port" 0 "$work/$d" --no-watch | grep -o 'registered [0-9]* files\?'
  end=$(date +%s.%N)
  echo "$d: $(echo "$end - $start" | bc) s"
done
