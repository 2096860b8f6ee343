#!/usr/bin/env python3
"""Write the nbd_session seed corpus: what well-behaved and odd clients send (client flags,
options, requests, payloads), big-endian as on the wire. Run from fuzz/."""
import os
import struct

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def name(n):
    return struct.pack(">I", len(n)) + n


def go(code, export, infos=()):
    return opt(code, name(export) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos))


def meta(code, export, queries):
    return opt(code, name(export) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries))


def req(kind, offset, length, flags=0, handle=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, kind, handle, offset, length) + payload


READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZEROES, STATUS = range(8)
seeds = {
    "structured-go": struct.pack(">I", 3)
    + opt(8)
    + meta(10, b"", [b"base:allocation"])
    + go(7, b"", [1, 2, 3])
    + req(READ, 0, 512)
    + req(WRITE, 100, 50, payload=b"\x5a" * 50)
    + req(READ, 90, 70, flags=4)
    + req(STATUS, 0, 32768)
    + req(STATUS, 0, 4096, flags=8)
    + req(ZEROES, 1000, 3000, flags=2)
    + req(ZEROES, 0, 512, flags=16)
    + req(TRIM, 512, 4096, flags=1)
    + req(FLUSH, 0, 0)
    + req(CACHE, 0, 4096)
    + req(READ, 32000, 1000)
    + req(9, 0, 0)
    + req(DISC, 0, 0),
    "export-name-ro": struct.pack(">I", 1)
    + opt(3)
    + go(6, b"b", [0, 3])
    + opt(11)
    + meta(9, b"b", [])
    + opt(1, b"b")
    + req(WRITE, 0, 512, payload=b"\x01" * 512)
    + req(READ, 1, 4094)
    + req(TRIM, 0, 4096)
    + req(DISC, 0, 0),
    "abort": struct.pack(">I", 3) + opt(5) + opt(2),
    "bad-magic": struct.pack(">I", 3) + struct.pack(">QII", 1, 7, 0),
    "oversized-option": struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 9, 1 << 20) + b"\0" * 64,
    "oversized-write": struct.pack(">I", 3) + go(7, b"a") + req(WRITE, 0, 64 << 20) + b"\0" * 32,
}
os.makedirs("corpus/nbd_session", exist_ok=True)
for k, v in seeds.items():
    with open(f"corpus/nbd_session/{k}", "wb") as f:
        f.write(v)
