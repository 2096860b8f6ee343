//! `VolumeIo` against a byte model (random seeks, unaligned reads and writes, the end), and
//! real consumers: `io::copy` and a gzip stream written and decoded through the adapter.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::testing::conformance::pattern;
use dmemu::{
    Access, FileVolume, MemVolume, Registry, SectorCount, SharedVolume, Table, TableMode, VolumeIo,
};
use proptest::prelude::*;

const ENOSPC: i32 = 28;
const EINVAL: i32 = 22;
const EROFS: i32 = 30;
/// 16 sectors: small enough that random positions hit both ends often.
const BYTES: usize = 16 * 512;

#[derive(Clone, Debug)]
enum Op {
    Seek(SeekFrom),
    Read(usize),
    Write(Vec<u8>),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let limit = BYTES as i64 + 600;
    prop_oneof![
        (0..limit as u64).prop_map(|n| Op::Seek(SeekFrom::Start(n))),
        (-limit..limit).prop_map(|d| Op::Seek(SeekFrom::Current(d))),
        (-limit..600i64).prop_map(|d| Op::Seek(SeekFrom::End(d))),
        (0..1500usize).prop_map(Op::Read),
        prop::collection::vec(any::<u8>(), 0..1500).prop_map(Op::Write),
        Just(Op::Flush),
    ]
}

/// What a block device file does, on bytes: reads stop at the end, writes are cut there
/// and fail with ENOSPC once nothing fits.
struct Model {
    bytes: Vec<u8>,
    pos: u64,
}

impl Model {
    fn seek(&mut self, from: SeekFrom) -> Option<u64> {
        let len = self.bytes.len() as i128;
        let to = match from {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => len + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        let to = u64::try_from(to).ok()?;
        self.pos = to;
        Some(to)
    }
    fn read(&mut self, n: usize) -> Vec<u8> {
        let start = (self.pos as usize).min(self.bytes.len());
        let end = (start + n).min(self.bytes.len());
        self.pos += (end - start) as u64;
        self.bytes[start..end].to_vec()
    }
    /// Whether `write_all` succeeds (it fails after writing what fits).
    fn write(&mut self, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let start = (self.pos as usize).min(self.bytes.len());
        let fit = (self.bytes.len() - start).min(data.len());
        if self.pos as usize >= self.bytes.len() {
            return false;
        }
        self.bytes[start..start + fit].copy_from_slice(&data[..fit]);
        self.pos += fit as u64;
        fit == data.len()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn volume_io_matches_a_byte_model(ops in prop::collection::vec(op(), 1..40)) {
        let start = pattern(0, BYTES, 3);
        let disk = MemVolume::from_bytes(start.clone()).unwrap();
        let mut io = VolumeIo::new(&disk);
        let mut model = Model { bytes: start, pos: 0 };
        for op in ops {
            match op {
                Op::Seek(from) => {
                    let before = io.stream_position().unwrap();
                    match (io.seek(from), model.seek(from)) {
                        (Ok(got), Some(want)) => prop_assert_eq!(got, want),
                        (Err(e), None) => {
                            prop_assert_eq!(e.raw_os_error(), Some(EINVAL));
                            prop_assert_eq!(io.stream_position().unwrap(), before);
                        }
                        (got, want) => prop_assert!(false, "seek {:?}: {:?} vs {:?}", from, got, want),
                    }
                }
                Op::Read(n) => {
                    let mut buf = vec![0u8; n];
                    let mut got = 0;
                    loop {
                        let k = io.read(&mut buf[got..]).unwrap();
                        if k == 0 {
                            break;
                        }
                        got += k;
                    }
                    prop_assert_eq!(&buf[..got], &model.read(n)[..]);
                }
                Op::Write(data) => {
                    let r = io.write_all(&data);
                    let ok = model.write(&data);
                    match r {
                        Ok(()) => prop_assert!(ok, "write of {} bytes should fail", data.len()),
                        Err(e) => {
                            prop_assert!(!ok);
                            prop_assert_eq!(e.raw_os_error(), Some(ENOSPC));
                        }
                    }
                }
                Op::Flush => io.flush().unwrap(),
            }
            prop_assert_eq!(io.stream_position().unwrap(), model.pos);
        }
        prop_assert!(disk.to_vec() == model.bytes, "volume differs from the model");
    }
}

fn device(registry: &Registry, table: &str) -> SharedVolume {
    registry
        .create(&DeviceSpec {
            name: "dev".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(table).unwrap(),
        })
        .unwrap()
}

#[test]
fn io_copy_reads_a_whole_device_and_writes_one_at_an_odd_offset() {
    let r = Registry::new();
    let data = pattern(0, 4096 * 512, 7);
    r.insert_volume(
        "disk",
        Arc::new(MemVolume::from_bytes(data.clone()).unwrap()),
    );
    let dev = device(&r, "0 4096 linear disk 0\n4096 100 zero");
    let mut out = Vec::new();
    let n = io::copy(&mut VolumeIo::new(Arc::clone(&dev)), &mut out).unwrap();
    assert_eq!(n, 4196 * 512);
    assert!(out[..data.len()] == data[..] && out[data.len()..].iter().all(|&b| b == 0));

    let target = MemVolume::new(SectorCount(4200)).unwrap();
    let mut io = VolumeIo::new(&target);
    io.seek(SeekFrom::Start(777)).unwrap();
    io::copy(&mut &data[..1_000_001], &mut io).unwrap();
    let all = target.to_vec();
    assert!(all[..777].iter().all(|&b| b == 0));
    assert!(all[777..777 + 1_000_001] == data[..1_000_001]);
    assert!(all[777 + 1_000_001..].iter().all(|&b| b == 0));
}

#[test]
fn gzip_stream_written_through_the_adapter_decodes_through_it() {
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(2048 * 512).unwrap();
    let disk: SharedVolume = Arc::new(FileVolume::open(f.path(), Access::ReadWrite).unwrap());
    // Text-like, compressible input of an odd length, placed at an odd offset.
    let input: Vec<u8> = (0..300_001u32)
        .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ ((i / 4096) as u8 & 1))
        .collect();
    let mut io = VolumeIo::new(Arc::clone(&disk));
    io.seek(SeekFrom::Start(1001)).unwrap();
    let mut gz = GzEncoder::new(io, Compression::default());
    gz.write_all(&input).unwrap();
    let mut io = gz.finish().unwrap();
    io.flush().unwrap();
    assert!(io.stream_position().unwrap() < 1001 + input.len() as u64 / 4);

    let mut io = VolumeIo::new(disk);
    io.seek(SeekFrom::Start(1001)).unwrap();
    let mut back = Vec::new();
    GzDecoder::new(io).read_to_end(&mut back).unwrap();
    assert!(back == input, "gzip round trip through the adapter differs");
}

#[test]
fn errors_keep_their_errno_and_the_adapter_keeps_the_words() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(8 * 512).unwrap();
    let ro = FileVolume::open(f.path(), Access::ReadOnly).unwrap();
    let mut io = VolumeIo::new(&ro);
    let e = io.write(&[1u8; 100]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EROFS));
    let words = io.take_error().unwrap().to_string();
    assert!(words.contains("is read-only"), "{words}");
    assert!(io.take_error().is_none());

    let r = Registry::new();
    let dev = device(&r, "0 8 error");
    let mut io = VolumeIo::new(dev);
    let e = io.read(&mut [0u8; 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5));
    assert!(io.take_error().unwrap().to_string().starts_with("error:"));
    // Reads at the end give 0, writes there ENOSPC; nothing moved.
    io.seek(SeekFrom::End(0)).unwrap();
    assert_eq!(io.read(&mut [0u8; 10]).unwrap(), 0);
    assert_eq!(
        io.write(&[0u8; 10]).unwrap_err().raw_os_error(),
        Some(ENOSPC)
    );
    assert_eq!(io.stream_position().unwrap(), 8 * 512);
}
