//! The fuzz drivers of the LUKS, verity, FEC and shell targets over their seed corpus
//! (fuzz/corpus/<target>, made from tests/fixtures by fuzz/make-seeds.py), so `cargo test`
//! runs what the fuzzers start from.

use dmemu::testing::fuzz;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    assert!(!out.is_empty(), "empty corpus {target}");
    out.sort();
    out
}

#[test]
fn fuzz_seed_corpus_luks1_header_runs_clean() {
    for (_, data) in corpus("luks1_header") {
        fuzz::luks1_header(&data);
    }
}

#[test]
fn fuzz_seed_corpus_luks2_header_runs_clean() {
    for (_, data) in corpus("luks2_header") {
        fuzz::luks2_header(&data);
    }
}

#[test]
fn fuzz_seed_corpus_luks2_json_runs_clean() {
    for (_, data) in corpus("luks2_json") {
        fuzz::luks2_json(&data);
    }
}

#[test]
fn fuzz_seed_corpus_af_digest_runs_clean() {
    for (_, data) in corpus("af_digest") {
        fuzz::af_digest(&data);
    }
}

#[test]
fn fuzz_seed_corpus_verity_tree_runs_clean() {
    for (_, data) in corpus("verity_tree") {
        fuzz::verity_tree(&data);
    }
}

#[test]
fn fuzz_seed_corpus_fec_decode_runs_clean() {
    for (_, data) in corpus("fec_decode") {
        fuzz::fec_decode(&data);
    }
}

/// The seeds reach the reads: the clean one reads its first and last blocks, one damaged block is
/// corrected, damage beyond the code's capacity fails exactly the five blocks it hit, and
/// parity damaged in the first parity block leaves a damaged block of the other round
/// correctable.
#[test]
fn fuzz_seed_corpus_verity_fec_runs_clean_and_reaches_fec() {
    let got: Vec<(String, Option<(u64, u64)>)> = corpus("verity_fec")
        .into_iter()
        .map(|(name, data)| {
            (
                name.rsplit('/').next().unwrap().to_string(),
                fuzz::verity_fec(&data),
            )
        })
        .collect();
    let of = |n: &str| got.iter().find(|(name, _)| name == n).unwrap().1.unwrap();
    // Blocks read: 0, 255 and the damaged ones.
    assert_eq!(of("r4-clean"), (2, 0));
    assert_eq!(of("r4-block33"), (3, 1));
    assert_eq!(of("r4-beyond"), (2, 0));
    assert_eq!(of("r4-bad-parity"), (3, 1));
}

#[test]
fn fuzz_seed_corpus_shell_lines_runs_clean() {
    for (_, data) in corpus("shell_lines") {
        fuzz::shell_lines(&data);
    }
}

#[test]
fn fuzz_seed_corpus_thin_xml_runs_clean() {
    for (_, data) in corpus("thin_xml") {
        fuzz::thin_xml(&data);
    }
}

#[test]
fn fuzz_seed_corpus_log_writes_log_runs_clean() {
    for (_, data) in corpus("log_writes_log") {
        fuzz::log_writes_log(&data);
    }
}

/// libFuzzer always tries the empty input first: on thin metadata it builds a fresh pool and
/// fills it (it once waited out the 60 s `no_space_timeout` there, and libFuzzer timed out).
#[test]
fn thin_metadata_driver_takes_the_empty_input() {
    fuzz::thin_metadata(&[]);
}

#[test]
fn fuzz_seed_corpus_cache_metadata_runs_clean() {
    for (_, data) in corpus("cache_metadata") {
        fuzz::cache_metadata(&data);
        // The same image with every checksum refreshed.
        let mut resealed = data.clone();
        resealed[0] |= 1;
        fuzz::cache_metadata(&resealed);
    }
    fuzz::cache_metadata(&[]);
}

#[test]
fn fuzz_seed_corpus_integrity_superblock_runs_clean() {
    for (_, data) in corpus("integrity_superblock") {
        fuzz::integrity_superblock(&data);
        // Every table byte over each seed, and the seed cut inside its journal.
        for flags in 0..16u8 {
            let mut d = data.clone();
            d[0] = flags;
            fuzz::integrity_superblock(&d);
        }
        fuzz::integrity_superblock(&data[..data.len().min(70_000)]);
    }
    fuzz::integrity_superblock(&[]);
    fuzz::integrity_superblock(&[0]);
}

#[test]
fn fuzz_seed_corpus_writecache_ssd_runs_clean() {
    for (_, data) in corpus("writecache_ssd") {
        // Every block size, and every superblock byte and the first entries flipped.
        for sel in 0..4u8 {
            let mut d = data.clone();
            d[0] = sel;
            fuzz::writecache_ssd(&d);
        }
        for at in 1..200 {
            for x in [0x01, 0x80, 0xff] {
                let mut d = data.clone();
                d[at] ^= x;
                fuzz::writecache_ssd(&d);
            }
        }
        fuzz::writecache_ssd(&data[..40]);
    }
    fuzz::writecache_ssd(&[]);
}
