//! Shared by the remap kernel tests (unstriped, switch, ebs): the format of their fixtures in
//! tests/fixtures/remap (made by the make-*.sh scripts there on the 6.12 oracle VM) and the
//! data the guest scripts fill their devices with.
#![allow(dead_code, unreachable_pub)]

/// The first `len` bytes of what `seq FIRST STEP LAST` prints.
pub fn seq_text(first: i64, step: i64, last: i64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = first;
    while out.len() < len && (step > 0 && n <= last || step < 0 && n >= last) {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += step;
    }
    out.truncate(len);
    out
}

/// Lower-case hex, as `sha256sum` prints a digest.
pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fixture's `### name` blocks: each one's lines as (key, value), in order (a key may
/// repeat). A table or status of two lines prints its second line bare: it continues the key
/// before, joined with a newline. dd's own complaint during a failing read (`dd: ...`) sits
/// on a line of its own and is skipped, and so are lines before the first case.
pub fn cases(fixture: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in fixture.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            out.push((name.to_string(), Vec::new()));
            continue;
        }
        // Lines before the first case are the guest's notes on itself (`dmzadm none`).
        let Some((_, case)) = out.last_mut() else {
            continue;
        };
        match line.split_once(' ') {
            Some((k, v))
                if k.starts_with(|c: char| c.is_ascii_lowercase())
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                case.push((k.to_string(), v.to_string()));
            }
            _ if line.starts_with("dd: ") => {}
            _ => {
                let last = case.last_mut().expect("a key line first");
                last.1.push('\n');
                last.1.push_str(line);
            }
        }
    }
    out
}

/// One `@@tag rest` record per element of a fixture whose records start with `@@` (the
/// flush fixtures: kernel-6.12-switch-flush.txt, kernel-6.12-flush.txt).
pub fn records(fixture: &str) -> Vec<(String, String)> {
    fixture
        .lines()
        .filter_map(|l| l.strip_prefix("@@"))
        .map(|r| {
            let (t, rest) = r.split_once(' ').unwrap_or((r, ""));
            (t.to_string(), rest.to_string())
        })
        .collect()
}

/// The bytes of the gzip'ed fixture tests/fixtures/`name`.
pub fn gunzip(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        ),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    out
}

/// The first value of `key`.
pub fn get<'a>(lines: &'a [(String, String)], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every value of `key`, in order.
pub fn all<'a>(lines: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The first value of `key`, which case `what` must have.
pub fn one<'a>(lines: &'a [(String, String)], key: &str, what: &str) -> &'a str {
    get(lines, key).unwrap_or_else(|| panic!("{what}: {key} in case"))
}

/// The case's table with the guest's loop devices named by their numbers (`7:N`).
pub fn input(lines: &[(String, String)], name: &str) -> String {
    (0..6).fold(one(lines, "table-in", name).to_string(), |t, i| {
        t.replace(&format!("/dev/loop{i}"), &format!("7:{i}"))
    })
}

/// Assert that dmemu refused case `name` as the kernel did: the kernel's
/// `table: 253:0: TARGET: WORDS (-ERRNO)` line gives the words our error must hold and the
/// errno; a missing device (ENOENT) is named in dmemu's own lookup words.
pub fn assert_refused_like_kernel(
    name: &str,
    lines: &[(String, String)],
    target: &str,
    err: &dmemu::Error,
) {
    let prefix = format!("table: 253:0: {target}: ");
    let kernel = lines
        .iter()
        .filter(|(k, _)| k == "kernel-err")
        .find_map(|(_, v)| v.split_once(prefix.as_str()))
        .map(|(_, w)| w)
        .unwrap_or_else(|| panic!("{name}: the kernel's words"));
    let (words, errno) = kernel.rsplit_once(" (-").expect("an errno");
    let ours = err.to_string();
    if errno == "ENOENT)" {
        assert_eq!(err.errno(), 2, "{name}: {err}");
        assert!(ours.contains("/dev/nonexistent"), "{name}: {ours}");
    } else {
        let want = match errno {
            "EINVAL)" => 22,
            "EOPNOTSUPP)" => 95,
            "EILSEQ)" => 84,
            "ENOTBLK)" => 15,
            "EIO)" => 5,
            other => panic!("{name}: errno {other}"),
        };
        assert_eq!(err.errno(), want, "{name}: {err}");
        assert!(
            ours.contains(words),
            "{name}: ours {ours:?}, kernel {words:?}"
        );
    }
}

/// Every table `fixture` shows the kernel loading parses, is typed (`is_typed`) and prints
/// as `dmsetup table` printed it; the number of such cases.
pub fn loaded_print_as_the_kernel(
    fixture: &str,
    is_typed: fn(&dmemu::targets::TargetSpec) -> bool,
) -> usize {
    let mut loaded = 0;
    for (name, lines) in cases(fixture) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let table =
            dmemu::Table::parse(&input(&lines, &name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(is_typed(&table.lines[0].spec), "{name}: typed");
        // dmsetup's line keeps the kernel's trailing space (multipath).
        assert_eq!(
            table.to_text(Default::default()).trim_end_matches('\n'),
            one(&lines, "table", &name),
            "{name}"
        );
        loaded += 1;
    }
    loaded
}

/// Every table `fixture` shows the kernel refusing is refused by a registry holding
/// `devices` zeroed 1 MiB volumes as `7:0`...: with the kernel's words and errno
/// ([`assert_refused_like_kernel`]); the number of such cases.
pub fn refused_as_the_kernel(fixture: &str, target: &str, devices: usize) -> usize {
    refusals(fixture, target, |_, _| {
        let reg = dmemu::Registry::new();
        for i in 0..devices {
            reg.insert_volume(
                &format!("7:{i}"),
                std::sync::Arc::new(dmemu::MemVolume::new(dmemu::SectorCount(2048)).unwrap()),
            );
        }
        reg
    })
    .len()
}

/// A case the kernel refused: its name, its lines and dmemu's error.
pub type Refusal = (String, Vec<(String, String)>, dmemu::Error);

/// Every table `fixture` shows the kernel refusing, refused by the registry
/// `registry_for(name, lines)` makes for the case with the kernel's words and errno
/// ([`assert_refused_like_kernel`]): each case's name, lines and dmemu's error.
pub fn refusals(
    fixture: &str,
    target: &str,
    registry_for: impl Fn(&str, &[(String, String)]) -> dmemu::Registry,
) -> Vec<Refusal> {
    let mut out = Vec::new();
    for (name, lines) in cases(fixture) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let reg = registry_for(&name, &lines);
        let err = dmemu::Table::parse(&input(&lines, &name))
            .and_then(|table| reg.create(&spec(&name, table)))
            .expect_err(&name);
        assert_refused_like_kernel(&name, &lines, target, &err);
        out.push((name, lines, err));
    }
    out
}

/// A memory volume with a logical block size of `lbs` bytes (a loop device made with
/// `losetup -b`): requests that are not whole blocks are refused (EINVAL), as the block
/// layer refuses them for O_DIRECT I/O.
#[derive(Debug)]
pub struct Loop {
    /// The bytes.
    pub mem: std::sync::Arc<dmemu::MemVolume>,
    /// Logical block size in bytes.
    pub lbs: u64,
}

impl Loop {
    fn check(&self, sector: dmemu::Sector, count: u64) -> dmemu::Result<()> {
        let block = self.lbs / 512;
        if sector.0 % block != 0 || count % block != 0 {
            return Err(dmemu::Error::invalid(
                "loop",
                "request not aligned to the block size",
            ));
        }
        Ok(())
    }
}

impl dmemu::Volume for Loop {
    fn size(&self) -> dmemu::SectorCount {
        self.mem.size()
    }
    fn logical_block_size(&self) -> u32 {
        u32::try_from(self.lbs).unwrap()
    }
    fn read(&self, sector: dmemu::Sector, buf: &mut [u8]) -> dmemu::Result<()> {
        self.check(sector, buf.len() as u64 / 512)?;
        self.mem.read(sector, buf)
    }
    fn write(&self, sector: dmemu::Sector, buf: &[u8]) -> dmemu::Result<()> {
        self.check(sector, buf.len() as u64 / 512)?;
        self.mem.write(sector, buf)
    }
    fn flush(&self) -> dmemu::Result<()> {
        self.mem.flush()
    }
    fn discard(&self, sector: dmemu::Sector, count: dmemu::SectorCount) -> dmemu::Result<()> {
        self.check(sector, count.0)?;
        self.mem.discard(sector, count)
    }
    fn allocation(
        &self,
        sector: dmemu::Sector,
        count: dmemu::SectorCount,
    ) -> dmemu::Result<Vec<dmemu::volume::Extent>> {
        self.mem.allocation(sector, count)
    }
}

/// The sha256 of a device's first `size` bytes read 4 KiB at a time (the guests'
/// `dd bs=4096 iflag=direct | sha256sum`).
pub fn read_sha_4k(dev: &dyn dmemu::Volume, size: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 4096];
    for b in 0..size / 4096 {
        dev.read(dmemu::Sector(b * 8), &mut buf)
            .unwrap_or_else(|e| panic!("read of block {b}: {e}"));
        h.update(&buf);
    }
    hex(h.finalize())
}

/// The guests' second pattern, `seq 9000000 -1 1` cut to `size` bytes, written through the
/// device 4 KiB at a time.
pub fn write_pattern_4k(dev: &dyn dmemu::Volume, size: u64) {
    let pattern = seq_text(9_000_000, -1, 1, usize::try_from(size).unwrap());
    for (i, block) in pattern.chunks(4096).enumerate() {
        dev.write(dmemu::Sector(i as u64 * 8), block)
            .unwrap_or_else(|e| panic!("write of block {i}: {e}"));
    }
}

/// The sha256 of each volume's first `bytes` bytes.
pub fn volume_shas(vols: &[std::sync::Arc<dmemu::MemVolume>], bytes: usize) -> Vec<String> {
    use dmemu::Volume;
    use sha2::Digest;
    vols.iter()
        .map(|v| {
            let mut b = vec![0u8; bytes];
            v.read(dmemu::Sector(0), &mut b).unwrap();
            hex(sha2::Sha256::digest(&b))
        })
        .collect()
}

/// `n` volumes of `bytes` bytes holding what the guests' `fill` writes (volume i: `seq
/// (i*1000000+1) 3000000`, zeros where that runs out).
pub fn patterned(n: i64, bytes: usize) -> Vec<std::sync::Arc<dmemu::MemVolume>> {
    (0..n)
        .map(|i| {
            let mut b = seq_text(i * 1_000_000 + 1, 1, 3_000_000, bytes);
            b.resize(bytes, 0);
            std::sync::Arc::new(dmemu::MemVolume::from_bytes(b).unwrap())
        })
        .collect()
}

/// A registry holding `vols` as the guest's loop devices `7:0`, `7:1`, ...
pub fn registry_of(vols: &[std::sync::Arc<dmemu::MemVolume>]) -> dmemu::Registry {
    let reg = dmemu::Registry::new();
    for (i, v) in vols.iter().enumerate() {
        reg.insert_volume(&format!("7:{i}"), v.clone());
    }
    reg
}

/// A read-write device `name` of `table`.
pub fn spec(name: &str, table: dmemu::Table) -> dmemu::table::DeviceSpec {
    dmemu::table::DeviceSpec {
        name: name.to_string(),
        uuid: String::new(),
        minor: None,
        mode: dmemu::TableMode::ReadWrite,
        table,
    }
}

/// Create case `name`'s device from its table in `reg` and check it as the kernel showed
/// it: `dmsetup table`, `dmsetup status` and the size in bytes, which is returned too.
pub fn create_as_the_kernel(
    reg: &dmemu::Registry,
    name: &str,
    lines: &[(String, String)],
) -> (std::sync::Arc<dmemu::MappedDevice>, u64) {
    let table = dmemu::Table::parse(&input(lines, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dev = reg
        .create(&spec(name, table))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        dev.table_text(Default::default()).trim_end(),
        one(lines, "table", name),
        "{name}"
    );
    assert_eq!(
        dev.status_text().trim_end_matches('\n'),
        one(lines, "status", name),
        "{name}"
    );
    let size = dmemu::Volume::size(&*dev).0 * 512;
    assert_eq!(size.to_string(), one(lines, "size", name), "{name}");
    (dev, size)
}

/// `create_as_the_kernel`, then the guests' I/O check: the device read 4 KiB at a time has
/// the kernel's `read-sha256`, and the second pattern is written through it (`write-rc` 0
/// in the guest). Returns the device and its size in bytes for the case's own checks.
pub fn create_read_and_write_as_the_kernel(
    reg: &dmemu::Registry,
    name: &str,
    lines: &[(String, String)],
) -> (std::sync::Arc<dmemu::MappedDevice>, u64) {
    let (dev, size) = create_as_the_kernel(reg, name, lines);
    assert_eq!(
        read_sha_4k(&*dev, size),
        one(lines, "read-sha256", name),
        "{name}"
    );
    write_pattern_4k(&*dev, size);
    assert_eq!(one(lines, "write-rc", name), "0", "{name}");
    (dev, size)
}
