#!/usr/bin/env python3
"""Back-to-back Lookups of one name at an index server on 127.0.0.1 for SECONDS (docs/PROTOCOL.md,
version 3), one connection; prints, for each second, how many replies of each kind came (Peers,
NoPeers, or an Error's text) and the slowest lookup. For what a client sees while the index store's
database restarts (docs/SCALING.md):
    python3 benches/lookup_loop.py PORT 7 NAME &
    sleep 2; pg_ctlcluster --skip-systemctl-redirect 15 main restart
usage: lookup_loop.py PORT SECONDS NAME"""
import collections, socket, struct, sys, time
def frame(s, p): s.sendall(struct.pack('>I', len(p)) + p)
def recv(f):
    head = f.read(4)
    if len(head) < 4: raise EOFError
    (n,) = struct.unpack('>I', head); return f.read(n)
port, seconds, name = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode()
s = socket.create_connection(('127.0.0.1', port)); f = s.makefile('rb', buffering=1 << 16)
frame(s, b'PEERDEX\0' + struct.pack('>HB', 3, 1)); welcome = recv(f); assert welcome[10] == 0, welcome
kinds = {0x85: 'Peers', 0x86: 'NoPeers'}
seen = collections.Counter(); slowest = 0.0; start = time.monotonic()
while time.monotonic() - start < seconds:
    t = time.monotonic(); frame(s, b'\x06' + struct.pack('>H', len(name)) + name); reply = recv(f)
    slowest = max(slowest, time.monotonic() - t)
    kind = kinds.get(reply[0]) or (reply[3:].decode(errors='replace') if reply[0] == 0x82 else hex(reply[0]))
    seen[(int(t - start), kind)] += 1
for (second, kind), n in sorted(seen.items()):
    print(f'second {second}: {n} {kind}')
print(f'slowest lookup: {slowest * 1000:.0f} ms')
