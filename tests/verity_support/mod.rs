//! Shared helpers for the verity tests: the veritysetup fixtures in tests/fixtures/verity
//! (made by make.sh there) and tree arithmetic.
#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::{Path, PathBuf};

use dmemu::table::args::Args;
use dmemu::targets::verity::format::FormatParams;
use dmemu::targets::verity::{Geometry, HashAlg, Uuid, VerityArgs};
use dmemu::SectorCount;

/// The fixture directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verity")
}

/// A gunzipped fixture file.
pub fn load(name: &str) -> Vec<u8> {
    let gz = std::fs::read(dir().join(format!("{name}.gz"))).expect("fixture present");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .expect("fixture decompresses");
    out
}

/// One line of cases.txt.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub data: String,
    pub hash: String,
    pub uuid: String,
    pub hash_offset: u64,
    pub superblock: bool,
    pub version: u32,
    pub dbs: u32,
    pub hbs: u32,
    pub blocks: u64,
    pub hash_start: u64,
    pub alg: String,
    pub root: String,
    pub salt: String,
}

impl Case {
    /// Table args with the data and hash devices named `data_dev` / `hash_dev`.
    pub fn table_args(&self, data_dev: &str, hash_dev: &str, opts: &str) -> String {
        format!(
            "{} {data_dev} {hash_dev} {} {} {} {} {} {} {}{}{opts}",
            self.version,
            self.dbs,
            self.hbs,
            self.blocks,
            self.hash_start,
            self.alg,
            self.root,
            self.salt,
            if opts.is_empty() { "" } else { " " }
        )
    }

    /// Sectors the table line maps.
    pub fn sectors(&self) -> u64 {
        self.blocks * u64::from(self.dbs) / 512
    }

    /// Parsed table arguments.
    pub fn args(&self, data_dev: &str, hash_dev: &str, opts: &str) -> VerityArgs {
        let toks: Vec<String> = self
            .table_args(data_dev, hash_dev, opts)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        VerityArgs::parse(&mut Args::new(&toks), SectorCount(self.sectors())).expect("parses")
    }

    /// The parameters `veritysetup format` was given.
    pub fn params(&self) -> FormatParams {
        FormatParams {
            hash_type: self.version,
            algorithm: HashAlg::from_name(&self.alg).expect("known hash"),
            data_block_size: self.dbs,
            hash_block_size: self.hbs,
            data_blocks: self.blocks,
            salt: if self.salt == "-" {
                Vec::new()
            } else {
                dmemu::targets::verity::hash::from_hex(&self.salt).expect("hex salt")
            },
            uuid: Uuid::parse(&self.uuid).expect("uuid"),
            hash_offset: self.hash_offset,
            superblock: self.superblock,
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.params().geometry().expect("geometry")
    }

    pub fn root_bytes(&self) -> Vec<u8> {
        dmemu::targets::verity::hash::from_hex(&self.root).expect("hex root")
    }
}

/// Every case in cases.txt.
pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.txt")).expect("cases.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 14, "cases.txt line {l:?}");
            Case {
                name: f[0].into(),
                data: f[1].into(),
                hash: f[2].into(),
                uuid: f[3].into(),
                hash_offset: f[4].parse().unwrap(),
                superblock: f[5] == "1",
                version: f[6].parse().unwrap(),
                dbs: f[7].parse().unwrap(),
                hbs: f[8].parse().unwrap(),
                blocks: f[9].parse().unwrap(),
                hash_start: f[10].parse().unwrap(),
                alg: f[11].into(),
                root: f[12].into(),
                salt: f[13].into(),
            }
        })
        .collect()
}

/// The case named `name`.
pub fn case(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .expect("case exists")
}

/// Data blocks whose verification path uses hash block `hb`.
pub fn blocks_under(geo: &Geometry, hb: u64) -> Vec<u64> {
    (0..geo.data_blocks)
        .filter(|&b| (0..geo.levels()).any(|l| geo.hash_at(b, l).0 == hb))
        .collect()
}
