# Unaligned reads and writes from a client that asked for no block size (libnbd strict
# alignment off) on an export whose minimum block is larger than the request. Env: uri,
# REF (a file holding the export's contents as `dmemu read` gave them).
import os
import random

import nbd

h = nbd.NBD()
h.set_request_block_size(False)
h.connect_uri(os.environ["uri"])
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
with open(os.environ["REF"], "rb") as f:
    ref = bytearray(f.read())
assert h.get_size() == len(ref)
rng = random.Random(7)
cases = [(1, 1), (511, 2), (1000, 3000), (4095, 4098), (len(ref) - 3, 3)]
cases += [(rng.randrange(len(ref) - 9000), rng.randrange(1, 9000)) for _ in range(20)]
for off, n in cases:
    assert h.pread(n, off) == ref[off:off + n], (off, n)
for off, n in cases[:12]:
    data = bytes(rng.randrange(256) for _ in range(n))
    h.pwrite(data, off)
    ref[off:off + n] = data
for off, n in cases:
    assert h.pread(n, off) == ref[off:off + n], (off, n)
h.zero(1234, 5000)
ref[5000:6234] = bytes(1234)
assert h.pread(8192, 0) == ref[:8192]
h.flush()
h.shutdown()
with open(os.environ["OUT"], "wb") as f:
    f.write(ref)
print("ok")
