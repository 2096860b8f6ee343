# Protocol corner cases with libnbd. Env: uri (read-write export), ro_uri (a read-only
# export), IMAGE (the file behind uri, a 5 GiB sparse file).
import errno
import os

import nbd

GIB = 1 << 30

# An option this server refuses (NBD_OPT_STARTTLS, asked for by TLS_ALLOW) gets
# NBD_REP_ERR_UNSUP and the client goes on without TLS on the same connection.
h = nbd.NBD()
h.set_tls(nbd.TLS_ALLOW)
h.set_full_info(True)
h.connect_uri(os.environ["uri"])
assert not h.get_tls_negotiated()
assert h.get_canonical_export_name() == "big", h.get_canonical_export_name()
assert h.can_multi_conn() and h.can_fua() and h.can_trim() and h.can_fast_zero()

# A trim of 4 GiB - 512 bytes (the largest a 32-bit length can say in whole sectors).
h.pwrite(b"\xaa" * 4096, 1 << 20)
h.pwrite(b"\xbb" * 4096, 4 * GIB)
h.trim(4 * GIB - 512, 512)
h.flush()
with open(os.environ["IMAGE"], "rb") as f:
    f.seek(1 << 20)
    assert f.read(4096) == bytes(4096), "trimmed range still holds data"
    f.seek(4 * GIB)
    assert f.read(4096) == b"\xbb" * 4096, "data past the trim was lost"
assert h.pread(4096, 1 << 20) == bytes(4096)

# A write of several MiB at an odd offset (payload read in steps, head and tail blocks
# patched) reads back whole.
h.set_strict_mode(0)
data = os.urandom((9 << 20) + 123)
h.pwrite(data, 2 * GIB + 77)
assert h.pread(len(data), 2 * GIB + 77) == data
with open(os.environ["IMAGE"], "rb") as f:
    f.seek(2 * GIB + 77)
    assert f.read(len(data)) == data

# Requests past the end: ENOSPC for writes, EINVAL for reads; the connection stays up.
size = h.get_size()
for call, want in [(lambda: h.pwrite(b"x" * 512, size - 256), errno.ENOSPC),
                   (lambda: h.pread(512, size - 256), errno.EINVAL)]:
    try:
        call()
        raise SystemExit("request past the end succeeded")
    except nbd.Error as e:
        assert e.errno == errno.errorcode[want], e
# A fast zero of data must be refused (ENOTSUP) without writing anything.
h.pwrite(b"\xcc" * 4096, 8192)
try:
    h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit("fast zero of data succeeded")
except nbd.Error as e:
    assert e.errno == "ENOTSUP", e
assert h.pread(4096, 8192) == b"\xcc" * 4096

# Two connections (multi-conn): a write completed on one is read on the other and made
# durable by a flush sent on the other.
h2 = nbd.NBD()
h2.connect_uri(os.environ["uri"])
h.pwrite(b"\x5a" * 65536, 3 * GIB)
assert h2.pread(65536, 3 * GIB) == b"\x5a" * 65536
h2.flush()
h.pwrite(b"\x6b" * 512, 3 * GIB + 512, nbd.CMD_FLAG_FUA)
assert h2.pread(1024, 3 * GIB) == b"\x5a" * 512 + b"\x6b" * 512
h2.shutdown()
h.shutdown()

# A read-only export refuses writes with EPERM and stays up.
r = nbd.NBD()
r.connect_uri(os.environ["ro_uri"])
assert r.is_read_only()
r.set_strict_mode(0)
for call in [lambda: r.pwrite(b"x" * 512, 0), lambda: r.zero(512, 0), lambda: r.trim(512, 0)]:
    try:
        call()
        raise SystemExit("write to a read-only export succeeded")
    except nbd.Error as e:
        assert e.errno == "EPERM", e
assert len(r.pread(512, 0)) == 512
r.shutdown()

# Listing: every export, and base:allocation offered for it.
l = nbd.NBD()
l.set_opt_mode(True)
l.connect_uri(os.environ["uri"])
names = []
l.opt_list(lambda name, desc: names.append(name) or 0)
assert names == ["ro", "big"], names
ctx = []
l.opt_list_meta_context(lambda name: ctx.append(name) or 0)
assert ctx == ["base:allocation"], ctx
l.opt_abort()
print("ok")
