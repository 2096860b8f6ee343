#!/usr/bin/env python3
"""Writes the seed corpus of the LUKS, verity, FEC and shell fuzz targets from tests/fixtures.

Re-run from anywhere: python3 fuzz/make-seeds.py. Each seed is what its driver in
src/testing/fuzz.rs takes:
  luks1_header  a LUKS1 image's first bytes, to the end of its first key slot's material
  luks2_header  a flags byte (0: no re-sealing) then a LUKS2 image's first bytes, likewise
  luks2_json    a LUKS2 image's JSON text, NUL, then its key-slot area to that same end
  af_digest     hash index, stripes - 1 (le16), key length - 1, then a key slot's material
  verity_tree   root hash length, root hash, a hash image with its superblock at 0
  fec_decode    roots, then 255 bytes of a FEC fixture, then erasure positions
  verity_fec    root hash length, root hash, fec_roots - 2, fec_start, extra fec_blocks,
                le32-sized hash image (superblock at 0), le32-sized FEC image, then damage
                to the data image as (le32 offset, xor byte) pairs
  shell_lines   a table index, then the dust message script of tests/fixtures/fault
  cache_metadata  a flags byte (bit 0: re-seal every block), then a kernel cache metadata
                image up to its last used block
  log_writes_log  an options byte, then a dm-log-writes log of tests/fixtures/log-writes
                (cut after its last counted entry), plain and damaged
  writecache_ssd  a block size byte (512 << (byte % 4)), then the first 16 KiB of the
                kernel-made SSD writecache of tests/fixtures/writecache/io
  integrity_superblock  a table byte (bits 0-1 mode D/J/B/R, bits 2-3 hash crc32c/sha256/
                crc32/hmac(sha256)), then a kernel-made dm-integrity image's first bytes
                (superblock, journal or bitmap, first tags)
"""
import gzip, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, '..', 'tests', 'fixtures')
HASHES = ['sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160']


def put(target, name, data):
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def luks(name):
    return gzip.open(os.path.join(FIX, 'luks', name + '.img.gz')).read()


for n in ['l1-xts256', 'l1-cbc-essiv', 'l1-ripemd']:
    img = luks(n)
    key_bytes = struct.unpack('>I', img[108:112])[0]
    hash_name = img[72:104].split(b'\0')[0].decode()
    slots = []
    for i in range(8):
        active, _, _, off, stripes = struct.unpack('>II32sII', img[208 + 48 * i:256 + 48 * i])
        if active == 0x00AC71F3:
            slots.append((off * 512, key_bytes * stripes, stripes))
    off, size, stripes = min(slots)
    end = -(-(off + size) // 512) * 512
    put('luks1_header', n, img[:end])
    put('af_digest', n, bytes([HASHES.index(hash_name), (stripes - 1) & 0xff, (stripes - 1) >> 8,
                               key_bytes - 1]) + img[off:off + size])

for n in ['l2-argon2i', 'l2-essiv', 'l2-token', 'l2-reencrypt', 'l2-argon2id']:
    img = luks(n)
    hdr = struct.unpack('>Q', img[8:16])[0]
    text = img[4096:hdr].split(b'\0')[0]
    meta = json.loads(text)
    ends = [int(k['area']['offset']) + int(k['area']['size'])
            for k in meta['keyslots'].values() if k['type'] == 'luks2']
    end = min(ends) if ends else 2 * hdr
    if n in ('l2-argon2i', 'l2-reencrypt'):
        put('luks2_header', n, b'\0' + img[:end])
    put('luks2_json', n, text + b'\0' + img[2 * hdr:end])

for line in open(os.path.join(FIX, 'verity', 'cases.txt')):
    f = line.split()
    name, hash_img, off, sb, root = f[0], f[2], f[4], f[5], f[12]
    if off != '0' or sb != '1' or f[1] == f[2]:
        continue
    tree = gzip.open(os.path.join(FIX, 'verity', hash_img + '.gz')).read()
    r = bytes.fromhex(root)
    put('verity_tree', name, bytes([len(r)]) + r + tree)

fec = gzip.open(os.path.join(FIX, 'verity', 'fec-v1-sha256-4k-r4.img.gz')).read()
put('fec_decode', 'r4-data', bytes([2]) + fec[4096:4096 + 255] + bytes([0, 17, 254]))
put('fec_decode', 'r24-tail', bytes([22]) + fec[-255:] + bytes(range(0, 240, 10)))

# verity_fec: veritysetup's v1-sha256-4k tree and its 4-root FEC image (fec-cases.txt:
# fec_start 0, fec_blocks 259), undamaged, with one data block damaged within what FEC
# corrects, with damage beyond it, and with the parity itself damaged.
v = next(l.split() for l in open(os.path.join(FIX, 'verity', 'cases.txt'))
         if l.split()[0] == 'v1-sha256-4k')
tree = gzip.open(os.path.join(FIX, 'verity', v[2] + '.gz')).read()
r = bytes.fromhex(v[12])
head = bytes([len(r)]) + r + bytes([4 - 2, 0, 0]) + struct.pack('<I', len(tree)) + tree
sized = lambda b: struct.pack('<I', len(b)) + b
damage = lambda pairs: b''.join(struct.pack('<IB', o, x) for o, x in pairs)
put('verity_fec', 'r4-clean', head + sized(fec))
put('verity_fec', 'r4-block33', head + sized(fec) + damage((33 * 4096 + i, 0xff) for i in range(0, 60, 3)))
put('verity_fec', 'r4-beyond', head + sized(fec)
    + damage((b * 4096 + i, 0x5a) for b in (7, 9, 11, 13, 15) for i in range(0, 40, 5)))
bad_fec = bytearray(fec)
for i in range(0, 4096, 97):
    bad_fec[i] ^= 0x21
put('verity_fec', 'r4-bad-parity', head + sized(bytes(bad_fec)) + damage([(9 * 4096 + 1, 1)]))

script = []
for line in open(os.path.join(FIX, 'fault', 'dust.guest.sh')):
    w = line.split()
    if w[:1] == ['msg']:
        script.append('message 0 ' + ' '.join(w[1:]))
script += ['message 0 enable', 'read 0 8', 'write 0 8 171', 'status', 'table', 'sleep 5',
           'flush', 'discard 0 8', 'seed 7']
put('shell_lines', 'dust-messages', b'\0' + '\n'.join(script).encode() + b'\n')
put('shell_lines', 'flakey-io', b'\1' + b'read 0 64\nwrite 0 1 1\nsleep 1500\nwrite 0 1 2\n'
    b'read 0 1\nmessage 0 x\nstatus\nseed 3\n')

# thin_xml: the thin_dump fixtures, and the malformed documents of tests/thin_tools.rs.
for name in ('kernel', 'snap', 'snap-m', 'incremental-dmemu'):
    put('thin_xml', name, open(os.path.join(FIX, 'thin', name + '.xml'), 'rb').read())
H = (b'<superblock uuid="" time="0" transaction="1" flags="0" version="2" '
     b'data_block_size="128" nr_data_blocks="100">\n')
DEV = (b'  <device dev_id="1" mapped_blocks="1" transaction="0" creation_time="0" '
       b'snap_time="0">\n')
def m(o, d, n=1, t=0):
    if n == 1:
        return b'    <single_mapping origin_block="%d" data_block="%d" time="%d"/>\n' % (o, d, t)
    return (b'    <range_mapping origin_begin="%d" data_begin="%d" length="%d" time="%d"/>\n'
            % (o, d, n, t))
END = b'  </device>\n</superblock>\n'
put('thin_xml', 'overlap', H + DEV + m(0, 5, 10) + m(3, 50) + END)
put('thin_xml', 'unclosed', H + DEV + m(0, 5))
put('thin_xml', 'beyond', H + DEV + m(0, 95, 10) + END)
put('thin_xml', 'duplicate-device', H + DEV + m(0, 5) + b'  </device>\n' + DEV + END)
put('thin_xml', 'huge-length', H.replace(b'"100"', b'"18446744073709551615"') + DEV
    + m(0, 5, 18446744073709551615) + END)
put('thin_xml', 'nested-device', H + DEV + DEV + b'  </device>\n' + END)

def lw(name):
    return gzip.open(os.path.join(FIX, 'log-writes', name + '.img.gz')).read()


def lw_cut(log, keep=None):
    """The log up to the end of its entry number `keep` (default: all it counts), with the
    super counting that many."""
    n, ss = struct.unpack('<QI', log[16:28])
    keep = n if keep is None else keep
    at = ss
    for _ in range(keep):
        sector, nr, flags, _ = struct.unpack('<QQQQ', log[at:at + 32])
        at += ss + (0 if flags & 4 else nr * ss)
    return log[:16] + struct.pack('<Q', keep) + log[24:at]


ops = lw_cut(lw('ops-log'))
put('log_writes_log', 'ops', b'\0' + ops)
put('log_writes_log', 'ops-states', b'\x0c' + ops)
put('log_writes_log', 'ops-range-nodiscard', b'\x03' + ops)
bad = bytearray(ops)
bad[6 * 512 + 32] = 1
put('log_writes_log', 'ops-bad-padding', b'\x04' + bytes(bad))
more = bytearray(ops)
more[16:24] = struct.pack('<Q', 40)
put('log_writes_log', 'ops-super-claims-more', b'\x08' + bytes(more))
put('log_writes_log', 'ops-truncated', b'\0' + ops[:38400])
put('log_writes_log', 'ext4-first-8', b'\x0c' + lw_cut(lw('ext4-log'), 8))
put('log_writes_log', 'no-super', b'\0' + lw('full-log'))


def cache_meta(name):
    """A kernel-made cache metadata image up to its last non-zero block."""
    img = gzip.open(os.path.join(FIX, 'cache', name + '-meta.img.gz')).read()
    last = max(i for i in range(0, len(img), 4096) if any(img[i:i + 4096]))
    return img[:last + 4096]


put('cache_metadata', 'kernel-wb2', b'\0' + cache_meta('wb2'))
put('cache_metadata', 'kernel-wb1', b'\0' + cache_meta('wb1'))
put('writecache_ssd', 'kernel-4k',
    b'\3' + gzip.open(os.path.join(FIX, 'writecache', 'io', 'cache.img.gz')).read()[:16384])


def integrity(name, cut):
    """The first `cut` bytes of a dm-integrity fixture image."""
    return gzip.open(os.path.join(FIX, 'integrity', name + '.img.gz')).read()[:cut]


put('integrity_superblock', 'd-crc32c', b'\x00' + integrity('d-crc32c', 256 << 10))
put('integrity_superblock', 'j-sha256-journal', b'\x05' + integrity('j-sha256-journal', 1 << 20))
put('integrity_superblock', 'b-crc32c-dirty', b'\x02' + integrity('b-crc32c-dirty', 256 << 10))
put('integrity_superblock', 'd-hmac-sha256', b'\x0c' + integrity('d-hmac-sha256', 256 << 10))
put('integrity_superblock', 'f-sha256-1k-nowipe', b'\x04' + integrity('format/f-sha256-1k-nowipe', 256 << 10))
