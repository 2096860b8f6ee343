//! thin-pool and thin over metadata and data the real Linux 6.12 kernel wrote
//! (tests/fixtures/thin, made by make.sh with kernel.guest.sh in the oracle VM): the
//! tables print back as `dmsetup table` printed them, the status lines equal
//! `dmsetup status`, and every thin reads back with the sha256 the kernel computed.

mod thin_support;

use std::path::Path;
use std::process::Command;

use dmemu::registry::Registry;
use dmemu::table::parse_concise;
use dmemu::{Access, Keys, MappedDevice};
use sha2::{Digest, Sha256};
use thin_support::{fixtures, gunzip, kernel, sha256_of};

/// The images in a temp dir as meta.img, data.img, ext.img.
fn images() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for f in ["meta", "data", "ext"] {
        std::fs::write(
            t.path().join(format!("{f}.img")),
            gunzip(&format!("kernel-{f}.img.gz")),
        )
        .unwrap();
    }
    t
}

/// The kernel's tables as concise text: the pool's own devices bound to the images, the
/// thins naming the pool device (the kernel printed its number, 253:0). The pool comes
/// first (thins resolve it through the registry) and is read-write: the kernel refuses
/// thin-pool in a read-only table.
fn concise() -> String {
    let tables = kernel("TABLE");
    ["pool", "thin0", "thin1", "thin2"]
        .map(|name| {
            let mode = if name == "pool" { "rw" } else { "ro" };
            format!("{name},,,{mode},{}", tables[name].replace("253:0", "pool"))
        })
        .join(";")
}

fn registry(dir: &Path) -> Registry {
    registry_with(dir, Access::ReadOnly)
}

fn registry_with(dir: &Path, access: Access) -> Registry {
    let mut r = Registry::new().with_access(access);
    for (mm, f) in [("254:0", "meta"), ("254:16", "data"), ("254:32", "ext")] {
        r.bind(mm, dir.join(format!("{f}.img"))).unwrap();
    }
    r
}

fn build(dir: &Path) -> (Registry, Vec<std::sync::Arc<MappedDevice>>) {
    let r = registry(dir);
    let devs = r.create_all(&parse_concise(&concise()).unwrap()).unwrap();
    (r, devs)
}

#[test]
fn thins_over_kernel_metadata_read_back_with_the_kernels_sha256() {
    let t = images();
    let (_r, devs) = build(t.path());
    let want = kernel("SHA256");
    assert_eq!(want.len(), 3);
    for d in devs.iter().filter(|d| d.name() != "pool") {
        assert_eq!(
            sha256_of(d.as_ref()),
            want[d.name().as_str()],
            "{}",
            d.name()
        );
    }
}

#[test]
fn pool_and_thin_status_lines_equal_dmsetup_status() {
    let t = images();
    let (_r, devs) = build(t.path());
    let want = kernel("STATUS");
    for d in &devs {
        assert_eq!(
            d.status_text(),
            format!("{}\n", want[d.name().as_str()]),
            "{}",
            d.name()
        );
    }
}

#[test]
fn pool_and_thin_tables_print_back_as_dmsetup_table() {
    let t = images();
    let (_r, devs) = build(t.path());
    let want = kernel("TABLE");
    for d in &devs {
        let ours = d.table_text(Keys::Hidden).replace(" pool ", " 253:0 ");
        assert_eq!(
            ours,
            format!("{}\n", want[d.name().as_str()]),
            "{}",
            d.name()
        );
    }
}

/// Creating `spec` over the kernel's images fails with an error containing `words`.
fn assert_refused(spec: &str, words: &str) {
    let t = images();
    let r = registry(t.path());
    let e = r.create_all(&parse_concise(spec).unwrap()).unwrap_err();
    assert!(e.to_string().contains(words), "{e}");
}

#[test]
fn thin_over_a_missing_device_id_is_refused() {
    let spec = concise().split(';').next().unwrap().to_string() + ";t,,,ro,0 8 thin pool 3";
    assert_refused(
        &spec,
        "Couldn't open thin internal device: device 3 does not exist",
    );
}

#[test]
fn pool_with_another_block_size_than_the_metadata_is_refused() {
    assert_refused(
        "pool,,,rw,0 65536 thin-pool 254:0 254:16 256 16 0",
        "changing the data block size (from 128 to 256) is not supported",
    );
}

#[test]
fn pool_shorter_than_its_data_space_map_is_refused() {
    assert_refused(
        "pool,,,rw,0 32768 thin-pool 254:0 254:16 128 16 0",
        "pool target (256 blocks) too small: expected 512",
    );
}

#[test]
fn thin_naming_a_device_that_is_not_a_pool_is_refused() {
    assert_refused(
        "lin,,,ro,0 8 linear 254:16 0;t,,,ro,0 8 thin lin 0",
        "Couldn't get pool mapped device",
    );
}

fn dmemu(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// `dmemu ARGS` with the kernel's device numbers mapped to the images in `cwd`; it must
/// succeed.
fn dmemu_on_images(args: &[&str], cwd: &Path) {
    let maps = [
        "--map",
        "254:0=meta.img",
        "--map",
        "254:16=data.img",
        "--map",
        "254:32=ext.img",
    ];
    assert_success(&dmemu(&[args, &maps].concat(), cwd));
}

/// The command exited 0; its stderr is the failure message otherwise.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_reads_a_thin_out_of_kernel_metadata_and_data() {
    let t = images();
    let spec = concise();
    dmemu_on_images(
        &[
            "read",
            "--concise",
            &spec,
            "--device",
            "thin1",
            "-o",
            "thin1.img",
        ],
        t.path(),
    );
    let got = std::fs::read(t.path().join("thin1.img")).unwrap();
    let hex: String = Sha256::digest(&got)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, kernel("SHA256")["thin1"]);
}

#[test]
fn cli_thin_dump_prints_thin_dumps_xml_byte_for_byte() {
    let t = images();
    let out = dmemu(&["thin", "dump", "meta.img"], t.path());
    assert_success(&out);
    let want = std::fs::read(fixtures().join("kernel.xml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want)
    );
    let out = dmemu(&["thin", "dump", "-m", "meta.img"], t.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no snapshot"));
}

#[test]
fn cli_thin_ls_lists_each_device_as_the_kernels_thin_status_counts_it() {
    let t = images();
    let out = dmemu(&["thin", "ls", "meta.img"], t.path());
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("pool table: 0 65536 thin-pool <metadata> <data> 128 0 0"),
        "{text}"
    );
    let status = kernel("STATUS");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(3)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    for row in rows {
        // kernel thin status: "<start> <len> thin <mapped sectors> <highest sector>"
        let st: Vec<&str> = status[&format!("thin{}", row[0])].split(' ').collect();
        let mapped: u64 = row[1].parse().unwrap();
        let highest: u64 = row[4].parse().unwrap();
        assert_eq!(mapped * 128, st[3].parse::<u64>().unwrap());
        assert_eq!((highest + 1) * 128 - 1, st[4].parse::<u64>().unwrap());
    }
}

fn rw_concise() -> String {
    concise().replace(",ro,", ",rw,")
}

#[test]
fn cli_writes_through_a_thin_of_a_kernel_pool_and_commits_the_new_mapping() {
    let t = images();
    std::fs::write(t.path().join("in.bin"), vec![0xab; 8192]).unwrap();
    let spec = rw_concise();
    // 8 KiB into unmapped virtual block 300 of thin 1 (sector 300 * 128 + 16).
    let args = [
        "write",
        "--concise",
        &spec,
        "--device",
        "thin1",
        "--start",
        "38416",
        "-i",
        "in.bin",
    ];
    dmemu_on_images(&args, t.path());
    let out = dmemu(&["thin", "dump", "meta.img"], t.path());
    let xml = String::from_utf8(out.stdout).unwrap();
    // Allocation goes on from the first free block (the pool was reopened): 21.
    assert!(
        xml.contains(r#"<single_mapping origin_block="300" data_block="21" time="1"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<device dev_id="1" mapped_blocks="24""#),
        "{xml}"
    );
    let args = [
        "read",
        "--concise",
        &spec,
        "--device",
        "thin1",
        "--start",
        "38400",
        "--sectors",
        "128",
        "-o",
        "out.bin",
    ];
    dmemu_on_images(&args, t.path());
    let back = std::fs::read(t.path().join("out.bin")).unwrap();
    assert!(
        back[..8192].iter().all(|&b| b == 0),
        "zeroed before the write"
    );
    assert!(back[8192..16384].iter().all(|&b| b == 0xab));
    assert!(back[16384..].iter().all(|&b| b == 0));
}

#[test]
fn cli_message_creates_a_thin_that_thin_ls_then_lists() {
    let t = images();
    let spec = rw_concise();
    let args = [
        "message",
        "--concise",
        &spec,
        "--device",
        "pool",
        "0",
        "create_thin",
        "5",
    ];
    dmemu_on_images(&args, t.path());
    let out = dmemu(&["thin", "ls", "meta.img"], t.path());
    let text = String::from_utf8(out.stdout).unwrap();
    let row: Vec<&str> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .last()
        .unwrap()
        .split_whitespace()
        .collect();
    // dev 5: nothing mapped (none exclusive or shared), created at transaction 7, time 1.
    assert_eq!(row, ["5", "0", "0", "0", "-", "7", "1", "1"], "{text}");
}

#[test]
fn pool_longer_than_its_data_space_map_grows_it_like_maybe_resize_data_dev() {
    let t = images();
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(t.path().join("data.img"))
        .unwrap();
    data.set_len(64 << 20).unwrap();
    // Read-only images: the pool works on without growing for good.
    let r = registry(t.path());
    let devs = r
        .create_all(&parse_concise("pool,,,rw,0 131072 thin-pool 254:0 254:16 128 16 0").unwrap())
        .unwrap();
    assert!(devs[0].status_text().contains(" 27/512 - rw "));
    drop(devs);
    drop(r);
    let r = registry_with(t.path(), Access::ReadWrite);
    let devs = r
        .create_all(&parse_concise("pool,,,rw,0 131072 thin-pool 254:0 254:16 128 16 0").unwrap())
        .unwrap();
    // grow.guest.sh: the 6.12 kernel's status after the same growth (make-grow.sh).
    let want = std::fs::read_to_string(fixtures().join("grow-kernel.txt")).unwrap();
    assert_eq!(
        devs[0].status_text(),
        want.strip_prefix("STATUS pool ").unwrap()
    );
    drop(devs);
    drop(r);
    let out = dmemu(&["thin", "dump", "meta.img"], t.path());
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains(r#"nr_data_blocks="1024""#), "{xml}");
}

#[test]
fn cli_thin_check_accepts_kernel_metadata_and_names_a_wrong_count() {
    let t = images();
    let out = dmemu(&["thin", "check", "meta.img"], t.path());
    assert_success(&out);
    assert_eq!(out.stdout, b"ok\n");
    // Give data block 21 (free) a count of 1 in its bitmap, checksum fixed.
    let path = t.path().join("meta.img");
    let mut m = std::fs::read(&path).unwrap();
    let md = dmemu::targets::thin::metadata::Metadata::open(std::sync::Arc::new(
        dmemu::MemVolume::from_bytes(m.clone()).unwrap(),
    ))
    .unwrap();
    let bm = usize::try_from(md.data_space_map().unwrap().index[0].blocknr).unwrap() * 4096;
    m[bm + 16 + 5] |= 1 << 3;
    dmemu::targets::thin::metadata::block::seal(
        &mut m[bm..bm + 4096],
        dmemu::targets::thin::metadata::block::BITMAP_CSUM_XOR,
    );
    std::fs::write(&path, m).unwrap();
    let out = dmemu(&["thin", "check", "meta.img"], t.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data block 21: space map count 1, referenced 0 times"),
        "{err}"
    );
}

/// readonly-blank-kernel.txt (make-readonly-blank.sh): the 6.12 kernel refuses a read_only
/// pool over all-zero metadata with EPERM and leaves the metadata zero; dmemu does the same.
#[test]
fn read_only_pool_over_blank_metadata_is_refused_with_eperm_as_the_kernel_does() {
    let k = std::fs::read_to_string(fixtures().join("readonly-blank-kernel.txt")).unwrap();
    assert!(
        k.contains("DMESG thin-pool: Error creating metadata object (-EPERM)"),
        "{k}"
    );
    assert!(k.contains("failed: Operation not permitted"), "{k}");
    assert!(k.contains("ZERO_AFTER_RO 0"), "{k}");
    let t = tempfile::tempdir().unwrap();
    for f in ["meta", "data"] {
        std::fs::write(t.path().join(format!("{f}.img")), vec![0u8; 4 << 20]).unwrap();
    }
    let r = registry_with(t.path(), Access::ReadWrite);
    let table = "0 8192 thin-pool 254:0 254:16 128 0 1 read_only";
    let ro = parse_concise(&format!("pool,,,rw,{table}")).unwrap();
    let e = r.create_all(&ro).unwrap_err();
    assert!(
        e.to_string().contains("Error creating metadata object"),
        "{e}"
    );
    // The pool constructor's own error is the kernel's EPERM, over a writable file too.
    let dmemu::TargetSpec::ThinPool(args) = &ro[0].table.lines[0].spec else {
        panic!("a thin-pool line")
    };
    let file = |f: &str| -> dmemu::SharedVolume {
        std::sync::Arc::new(
            dmemu::FileVolume::open(t.path().join(format!("{f}.img")), Access::ReadWrite).unwrap(),
        )
    };
    let e =
        dmemu::targets::ThinPool::over(args, dmemu::SectorCount(8192), file("meta"), file("data"))
            .unwrap_err();
    assert_eq!(e.errno(), 1, "{e}");
    let meta = std::fs::read(t.path().join("meta.img")).unwrap();
    assert!(
        meta.iter().all(|&b| b == 0),
        "the read_only pool wrote its metadata"
    );
    // Without read_only the pool formats it, and reports what the kernel's status did.
    let rw = parse_concise("pool,,,rw,0 8192 thin-pool 254:0 254:16 128 0").unwrap();
    let devs = r.create_all(&rw).unwrap();
    let status = k.lines().find_map(|l| l.strip_prefix("STATUS ")).unwrap();
    assert_eq!(devs[0].status_text().trim_end(), status.trim_end());
}

/// `dmemu --read-only` on the kernel's pool and thins: the pool loads as a read_only pool
/// (the kernel allows thin-pool only in writable tables) over files opened read-only, the
/// thins read back the kernel's contents and no image changes.
#[test]
fn read_only_specs_load_the_kernels_pool_as_a_read_only_pool() {
    use dmemu::Volume as _;
    let t = images();
    let before: Vec<Vec<u8>> = ["meta", "data"]
        .map(|f| std::fs::read(t.path().join(format!("{f}.img"))).unwrap())
        .to_vec();
    let mut specs = parse_concise(&concise()).unwrap();
    specs
        .iter_mut()
        .for_each(dmemu::table::DeviceSpec::make_read_only);
    let r = registry_with(t.path(), Access::ReadOnly);
    let devs = r.create_all(&specs).unwrap();
    let pool = devs.iter().find(|d| d.name() == "pool").unwrap();
    assert!(
        pool.table_text(Keys::Hidden).contains(" read_only"),
        "{}",
        pool.table_text(Keys::Hidden)
    );
    assert!(
        pool.status_text().contains(" ro "),
        "{}",
        pool.status_text()
    );
    let want = kernel("SHA256");
    for d in devs.iter().filter(|d| d.name() != "pool") {
        assert_eq!(
            sha256_of(d.as_ref()),
            want[d.name().as_str()],
            "{}",
            d.name()
        );
        assert!(d.write(dmemu::Sector(0), &[1; 512]).is_err());
    }
    drop(devs);
    drop(r);
    for (f, b) in ["meta", "data"].iter().zip(before) {
        assert_eq!(
            std::fs::read(t.path().join(format!("{f}.img"))).unwrap(),
            b,
            "{f}.img changed"
        );
    }
}
