# A read crossing into a flakey line in its down phase: libnbd sees the data before the
# boundary as a data chunk, then an error chunk at the boundary (EIO), and the connection
# stays up for the next read. Env: uri, BOUNDARY (bytes).
import errno
import os

import nbd

boundary = int(os.environ["BOUNDARY"])
h = nbd.NBD()
h.connect_uri(os.environ["uri"])
chunks = []


def chunk(buf, offset, status, err):
    chunks.append((offset, len(buf), status, err.value))
    return 0


try:
    h.pread_structured(8192, boundary - 4096, chunk)
    raise SystemExit("read crossing the down window succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e
assert chunks == [
    (boundary - 4096, 4096, nbd.READ_DATA, 0),
    (boundary, 0, nbd.READ_ERROR, errno.EIO),
], chunks
with open(os.environ["IMAGE"], "rb") as f:
    want = f.read(4096)
assert h.pread(4096, 0) == want
h.shutdown()
print("ok")
