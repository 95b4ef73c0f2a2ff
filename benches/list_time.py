#!/usr/bin/env python3
"""Times a List at an index server on 127.0.0.1 (docs/PROTOCOL.md, version 3): after how long
its first entry came, and all of them. For listings over names loaded by hand (docs/PERFORMANCE.md,
store). usage: list_time.py PORT PATTERN [ROUNDS]"""
import socket, struct, sys, time
def frame(s, p): s.sendall(struct.pack('>I', len(p)) + p)
def recv_exact(f, n):
    b = f.read(n)
    if len(b) < n: raise EOFError
    return b
def recv(f):
    (n,) = struct.unpack('>I', recv_exact(f, 4)); return recv_exact(f, n)
port, pat = int(sys.argv[1]), sys.argv[2].encode()
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1):
    s = socket.create_connection(('127.0.0.1', port)); f = s.makefile('rb', buffering=1 << 20)
    frame(s, b'PEERDEX\0' + struct.pack('>HB', 3, 1)); w = recv(f); assert w[10] == 0, w
    t = time.monotonic(); frame(s, b'\x05' + struct.pack('>H', len(pat)) + pat + b'\x00')
    n = 0; first = None
    while True:
        m = recv(f)
        if m[0] == 0x83:
            c = struct.unpack('>I', m[1:5])[0]
            if c and first is None: first = time.monotonic() - t
            n += c
        elif m[0] == 0x84: break
        else: print('reply', m[:80]); break
    all_ = time.monotonic() - t
    print(f'{pat.decode()}: {n} entries, first {first*1000 if first else -1:.1f} ms, all {all_:.3f} s', flush=True)
    s.close()
