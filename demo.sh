#!/usr/bin/env bash
# A complete local demo of peerdex: an index server and two peers on loopback.
# Peer A shares ./shared_files; peer B lists what A shares, downloads every file into a
# folder of its own, and the copies are checked byte for byte. Then everything stops.
#
# ./demo.sh --by-hand then leaves the index server running with a third peer sharing
# larger files (a folder of three, and one of 768 MiB), and starts a peer on this
# terminal for you to type into: try `ls`, `get al<Tab>`, `get #4`, `downloads`.
set -euo pipefail
by_hand=false
case "${1:-}" in
    --by-hand) by_hand=true ;;
    "") ;;
    *) echo "usage: $0 [--by-hand]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"

echo "==> building"
cargo build --quiet --bins
# Where cargo put them: a CARGO_TARGET_DIR set in the environment moves them.
bin=${CARGO_TARGET_DIR:-target}/debug

work=$(mktemp -d)
pids=()
cleanup() {
    exec 3>&- 4>&- 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits until file $1 has a line matching $2 (at most 30 s) and prints that line.
wait_line() {
    for _ in $(seq 300); do
        if line=$(grep -m1 -- "$2" "$1" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        sleep 0.1
    done
    echo "demo: timed out waiting for '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

echo "==> starting the index server on 127.0.0.1, port chosen by the system"
"$bin/indexing-server" 127.0.0.1 0 --log-file "$work/log.log" >"$work/index.out" 2>/dev/null &
pids+=($!)
port=$(wait_line "$work/index.out" "listening on" | sed 's/.*://')
echo "    index server listening on 127.0.0.1:$port"

echo "==> peer A shares ./shared_files"
mkfifo "$work/a.in"
"$bin/peer" 127.0.0.1 "$port" 0 shared_files <"$work/a.in" >"$work/a.out" 2>&1 &
pids+=($!)
exec 3>"$work/a.in"   # keep A's stdin open: A serves until we close it
echo register >&3
wait_line "$work/a.out" "serving" | sed 's/^/    A: /'
wait_line "$work/a.out" "registered" | sed 's/^/    A: /'

echo "==> peer B lists the files and downloads each one"
mkdir "$work/b"
commands="get_files_list"
for f in shared_files/*; do commands+=$'\n'"download $(basename "$f")"; done
echo "$commands" | sed 's/^/    B> /'
status=0
echo "$commands" | "$bin/peer" 127.0.0.1 "$port" 0 "$work/b" >"$work/b.out" 2>&1 || status=$?
sed 's/^/    B: /' "$work/b.out"
echo "    (peer B exited with status $status)"
[ "$status" -eq 0 ] || { echo "demo: peer B failed" >&2; exit 1; }

echo "==> verifying the copies"
for f in shared_files/*; do
    cmp "$f" "$work/b/$(basename "$f")"
    echo "    identical: $(sha256sum "$work/b/$(basename "$f")" | cut -c1-16)...  $(basename "$f")"
done

if $by_hand; then
    echo "==> peer C shares larger files: album/ (3 x 64 MiB) and big.bin (768 MiB)"
    mkdir -p "$work/c/album" "$work/d"
    for i in 1 2 3; do head -c 64M /dev/urandom >"$work/c/album/0$i intro.flac"; done
    head -c 768M /dev/urandom >"$work/c/big.bin"
    mkfifo "$work/c.in"
    "$bin/peer" --register 127.0.0.1 "$port" 0 "$work/c" <"$work/c.in" >"$work/c.out" 2>&1 &
    pids+=($!)
    exec 4>"$work/c.in"   # C serves until this closes
    wait_line "$work/c.out" "registered" | sed 's/^/    C: /'
    echo "==> your peer, on this terminal (quit or Ctrl-D to end the demo)"
    if [ -t 0 ] && [ -t 1 ]; then
        "$bin/peer" 127.0.0.1 "$port" 0 "$work/d" || true
    else
        echo "demo: --by-hand needs a terminal" >&2
    fi
fi

echo "==> shutting down"
exec 3>&- 4>&-
wait "${pids[1]}" && echo "    peer A exited cleanly at the end of its input"
kill "${pids[0]}"
echo "==> the index server's log"
sed 's/^/    /' "$work/log.log"
echo "==> demo complete: all files downloaded and verified"
