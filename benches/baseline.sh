#!/usr/bin/env bash
# The reference figures the benchmark's targets are set against, measured on this
# machine: redis-benchmark GET against a local Redis (lookup), and curl fetching a
# 1 GiB file from a local nginx with sendfile on (transfer).
# Needs: apt-get install redis-server redis-tools nginx-light curl
set -euo pipefail
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== redis-benchmark GET, 50 clients and 1 client"
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" set key value >/dev/null
for c in 50 1; do
    redis-benchmark -p "$port" -c "$c" -t get -n $((c == 1 ? 200000 : 2000000)) --csv | tail -1 |
        awk -F'"' -v c="$c" '{printf "  %2d clients: %s GET/s, p50 %s ms, p99 %s ms\n", c, $4, $10, $14}'
done

echo "== curl from nginx (sendfile on), 1 GiB of random bytes, written to a file"
mkdir -p "$work/www" "$work/dl"
head -c $((1 << 30)) /dev/urandom >"$work/www/big.bin"
port=$(free_port)
cat >"$work/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    server { listen 127.0.0.1:$port; root $work/www; }
}
CONF
nginx -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
for run in 1 2 3; do
    rm -f "$work/dl/big.bin"
    curl -s -o "$work/dl/big.bin" -w "  run $run: %{speed_download} bytes/s\n" "http://127.0.0.1:$port/big.bin" |
        awk '{printf "  %s %s %.0f MB/s\n", $1, $2, $3 / 1e6}'
done
echo "== openssl SHA-256 of the same file (one core; uses the SHA extensions when present)"
/usr/bin/time -f "  %e s" openssl dgst -sha256 "$work/www/big.bin" >/dev/null
