# Structured reads of a linear device over a sparse file: libnbd's pread_structured sees
# OFFSET_HOLE chunks exactly where SEEK_HOLE (python os.lseek on the image) finds holes,
# data chunks elsewhere, and the bytes equal the file's; a "don't fragment" read is one
# data chunk. Env: uri, IMAGE.
import os

import nbd

fd = os.open(os.environ["IMAGE"], os.O_RDONLY)
size = os.fstat(fd).st_size
with open(os.environ["IMAGE"], "rb") as f:
    ref = f.read()
# The image's holes, from the file system.
holes, at = [], 0
while at < size:
    h0 = os.lseek(fd, at, os.SEEK_HOLE)
    if h0 >= size:
        break
    try:
        d0 = os.lseek(fd, h0, os.SEEK_DATA)
    except OSError:
        d0 = size
    holes.append((h0, d0))
    at = d0
assert holes, "the image has no hole"

h = nbd.NBD()
h.connect_uri(os.environ["uri"])
assert h.get_structured_replies_negotiated()
got, chunks = bytearray(size), []


def chunk(subbuf, offset, status, error):
    chunks.append((offset, len(subbuf), status))
    got[offset:offset + len(subbuf)] = subbuf
    return 0


h.pread_structured(size, 0, chunk)
assert bytes(got) == ref
seen = [(o, o + n) for o, n, st in sorted(chunks) if st == nbd.READ_HOLE]
merged = []
for s, e in seen:
    if merged and merged[-1][1] == s:
        merged[-1] = (merged[-1][0], e)
    else:
        merged.append((s, e))
assert merged == holes, (merged, holes)
assert any(st == nbd.READ_DATA for _, _, st in chunks)

chunks.clear()
h.pread_structured(size, 0, chunk, flags=nbd.CMD_FLAG_DF)
assert [(o, n, st) for o, n, st in chunks] == [(0, size, nbd.READ_DATA)], chunks
h.shutdown()
print("ok")
