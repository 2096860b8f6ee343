//! proptest strategies generating valid tables of every typed target, for round-trip tests
//! here and for projects that build dm tables.

use proptest::prelude::*;

use crate::table::{parse_line_params, Table, TableLine};
use crate::targets::{DeviceAt, DeviceRef, LinearArgs, StripedArgs, TargetSpec};
use crate::units::{Sector, SectorCount};

/// A device reference: a path, a name or `major:minor`. Paths may contain spaces and
/// backslashes (printed escaped) but never `#` (dmsetup starts a comment there).
pub fn device_ref() -> impl Strategy<Value = DeviceRef> {
    prop_oneof![
        "/dev/[a-z]{2,5}[0-9]{0,2}",
        "[a-z][a-z0-9_.-]{0,12}",
        "(/[a-zA-Z0-9 _.\\\\-]{1,8}){1,3}",
        (0u32..300, 0u32..1000).prop_map(|(a, b)| format!("{a}:{b}")),
    ]
    // dmsetup trims the end of every line, so a device named last on a line cannot end in
    // whitespace; no real device path does.
    .prop_map(|s: String| {
        let t = s.trim_end();
        DeviceRef(if t.is_empty() { "d".into() } else { t.into() })
    })
}

/// A device and an offset.
pub fn device_at() -> impl Strategy<Value = DeviceAt> {
    (device_ref(), any::<u32>()).prop_map(|(device, off)| DeviceAt {
        device,
        offset: SectorCount(u64::from(off)),
    })
}

/// A target spec together with a line length it is valid for.
pub fn target_with_len() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    prop_oneof![
        (1u64..1 << 40, device_at())
            .prop_map(|(len, dest)| (SectorCount(len), TargetSpec::Linear(LinearArgs { dest }))),
        (
            1u64..2048,
            1u64..64,
            prop::collection::vec(device_at(), 1..6)
        )
            .prop_map(|(rows, chunk, stripes)| {
                let len = SectorCount(rows * chunk * stripes.len() as u64);
                let spec = TargetSpec::Striped(StripedArgs {
                    chunk_size: SectorCount(chunk),
                    stripes,
                });
                (len, spec)
            }),
        (1u64..1 << 40).prop_map(|len| (SectorCount(len), TargetSpec::Zero)),
        (1u64..1 << 40).prop_map(|len| (SectorCount(len), TargetSpec::Error)),
    ]
}

/// Parse generated parameter text for `target_type`; generators only produce valid text,
/// so a failure here is a bug in the generator or the parser and panics loudly.
fn typed(target_type: &'static str, len: u64, params: String) -> (SectorCount, TargetSpec) {
    let spec = parse_line_params(target_type, SectorCount(len), &params)
        .unwrap_or_else(|e| panic!("generated {target_type} line does not parse: {e}: {params}"));
    (SectorCount(len), spec)
}

fn dev_off() -> impl Strategy<Value = String> {
    device_at().prop_map(|d| d.to_string())
}

/// `delay` in its 3, 6 and 9 argument forms.
pub fn delay() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 32,
        prop::collection::vec((dev_off(), any::<u32>()), 1..=3),
    )
        .prop_map(|(len, classes)| {
            let params: Vec<String> = classes.iter().map(|(d, ms)| format!("{d} {ms}")).collect();
            typed("delay", len, params.join(" "))
        })
}

/// `flakey` with any valid combination of 6.12 features (or none).
pub fn flakey() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    let corrupt = (1u32..=u32::MAX, prop::bool::ANY, any::<u8>(), any::<u32>());
    (
        1u64..1 << 32,
        dev_off(),
        (0u32..1000, 1u32..1000),
        prop::option::of((
            prop::bool::ANY,
            0u8..3,
            prop::option::of(corrupt),
            prop::option::of(0u32..=1_000_000_000),
            prop::option::of(0u32..=1_000_000_000),
        )),
    )
        .prop_map(|(len, dest, (up, down), features)| {
            let mut words: Vec<String> = Vec::new();
            if let Some((error_reads, writes, corrupt, rr, rw)) = features {
                if error_reads {
                    words.push("error_reads".into());
                }
                match writes {
                    1 => words.push("drop_writes".into()),
                    2 => words.push("error_writes".into()),
                    _ => {}
                }
                if let Some((nth, read, value, flags)) = corrupt {
                    // `corrupt_bio_byte ... w` cannot be combined with drop/error_writes.
                    let dir = if read || writes != 0 { 'r' } else { 'w' };
                    words.push(format!("corrupt_bio_byte {nth} {dir} {value} {flags}"));
                }
                if let Some(p) = rr {
                    words.push(format!("random_read_corrupt {p}"));
                }
                if let Some(p) = rw {
                    words.push(format!("random_write_corrupt {p}"));
                }
            }
            let count: usize = words.iter().map(|w| w.split(' ').count()).sum();
            let features = if words.is_empty() {
                String::new()
            } else {
                format!(" {count} {}", words.join(" "))
            };
            typed("flakey", len, format!("{dest} {up} {down}{features}"))
        })
}

/// `dust` with any power-of-two block size up to the line length.
pub fn dust() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 32, dev_off(), 9u32..20).prop_map(|(len, dest, shift)| {
        let len = len.max(1 << (shift - 9));
        typed("dust", len, format!("{dest} {}", 1u32 << shift))
    })
}

/// `verity` (a singleton: only valid alone in a read-only table).
pub fn verity() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    let algs = prop::sample::select(vec![("sha256", 32usize), ("sha1", 20), ("sha512", 64)]);
    (
        0u32..=1,
        device_ref(),
        device_ref(),
        (9u32..=12, 9u32..=12),
        1u64..1 << 30,
        0u64..1 << 20,
        algs,
        prop::collection::vec(any::<u8>(), 64),
        prop::option::of(prop::collection::vec(any::<u8>(), 1..=32)),
        prop::sample::subsequence(
            vec![
                "ignore_corruption",
                "restart_on_error",
                "ignore_zero_blocks",
                "check_at_most_once",
                "try_verify_in_tasklet",
            ],
            0..=5,
        ),
    )
        .prop_map(
            |(version, data, hash, (dbs, hbs), blocks, start, (alg, dlen), root, salt, opts)| {
                let (dbs, hbs) = (1u64 << dbs, 1u64 << hbs.max(if dlen == 64 { 8 } else { 7 }));
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                let salt = salt.map_or_else(|| "-".to_string(), |s| hex(&s));
                let mut params = format!(
                    "{version} {data} {hash} {dbs} {hbs} {blocks} {start} {alg} {} {salt}",
                    hex(&root[..dlen])
                );
                if !opts.is_empty() {
                    params.push_str(&format!(" {} {}", opts.len(), opts.join(" ")));
                }
                let len = blocks * (dbs / 512);
                typed("verity", len, params)
            },
        )
}

/// Two device references that differ as strings (origin/COW, metadata/data, pool/origin).
fn two_devices() -> impl Strategy<Value = (DeviceRef, DeviceRef)> {
    (device_ref(), device_ref()).prop_map(|(a, b)| {
        if a == b {
            let other = DeviceRef(format!("{}x", b.0));
            (a, other)
        } else {
            (a, b)
        }
    })
}

/// `snapshot` and `snapshot-merge` with every store type and feature combination.
pub fn snapshot() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 32,
        prop::bool::ANY,
        two_devices(),
        prop::sample::select(vec!["P", "PO", "N", "p", "po", "n"]),
        0u32..=20,
        0u8..3,
    )
        .prop_map(
            |(len, merge, (origin, cow), store, chunk_shift, features)| {
                let store = if merge { "P" } else { store };
                // 0 means "from the COW header", which only a persistent store has.
                let chunk = if chunk_shift == 0 && store.starts_with(['P', 'p']) {
                    0
                } else {
                    1u32 << chunk_shift.max(1)
                };
                let features = match features {
                    1 => " 1 discard_zeroes_cow",
                    2 => " 2 discard_zeroes_cow discard_passdown_origin",
                    _ => "",
                };
                let t = if merge { "snapshot-merge" } else { "snapshot" };
                typed(t, len, format!("{origin} {cow} {store} {chunk}{features}"))
            },
        )
}

/// `snapshot-origin`.
pub fn snapshot_origin() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 32, device_ref())
        .prop_map(|(len, dev)| typed("snapshot-origin", len, dev.to_string()))
}

/// `log-writes <dev> <logdev>`.
pub fn log_writes() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 32, two_devices())
        .prop_map(|(len, (dev, log))| typed("log-writes", len, format!("{dev} {log}")))
}

/// `unstriped` with any stripe the kernel takes (up to and including the stripe count).
pub fn unstriped() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 20, 1u32..16, 1u32..1024, 0u32..=16, dev_off()).prop_map(
        |(rows, stripes, chunk, stripe, dest)| {
            let stripe = if stripes > 1 {
                stripe.min(stripes)
            } else {
                stripe
            };
            let params = format!("{stripes} {chunk} {stripe} {dest}");
            typed("unstriped", rows * u64::from(chunk), params)
        },
    )
}

/// `switch` with 1 to 6 paths and any region size (offsets printed as parsed).
pub fn switch() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 40,
        1u32..=u32::MAX,
        prop::collection::vec(dev_off(), 1..=6),
    )
        .prop_map(|(len, region, paths)| {
            let params = format!("{} {region} 0 {}", paths.len(), paths.join(" "));
            typed("switch", len, params)
        })
}

/// `mirror` with a core or disk log, any sync argument, 2 to 9 legs and features.
pub fn mirror() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u32..=31,
        1u64..1 << 20,
        prop::option::of(device_ref()),
        prop::sample::select(vec!["", " sync", " nosync"]),
        prop::collection::vec(dev_off(), 2..=9),
        prop::sample::select(vec![
            "",
            " 0",
            " 1 handle_errors",
            " 2 handle_errors keep_log",
        ]),
    )
        .prop_map(|(shift, rows, log, sync, legs, features)| {
            let region = 1u64 << shift;
            let n = 1 + u32::from(!sync.is_empty());
            let log = match log {
                Some(d) => format!("disk {} {d} {region}{sync}", n + 1),
                None => format!("core {n} {region}{sync}"),
            };
            let params = format!("{log} {} {}{features}", legs.len(), legs.join(" "));
            typed("mirror", rows * region, params)
        })
}

/// `raid`: raid1 with a sync argument, daemon sleep and region size, its legs with or
/// without metadata devices; raid0 with a chunk size over 2 to 6 stripes.
pub fn raid() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    fn pair() -> impl Strategy<Value = String> {
        (prop::option::of(device_ref()), device_ref())
            .prop_map(|(m, d)| format!("{} {d}", m.map_or("-".to_string(), |m| m.to_string())))
    }
    prop_oneof![
        (
            13u32..=20,
            1u64..1 << 10,
            prop::sample::select(vec!["", " sync", " nosync"]),
            prop::option::of(0i32..100_000),
            prop::collection::vec(pair(), 2..=6),
        )
            .prop_map(|(shift, rows, sync, sleep, legs)| {
                let region = 1u64 << shift;
                let mut params = format!("0{sync}");
                let mut n = 1 + usize::from(!sync.is_empty());
                if let Some(ms) = sleep {
                    params.push_str(&format!(" daemon_sleep {ms}"));
                    n += 2;
                }
                params.push_str(&format!(" region_size {region}"));
                n += 2;
                let line = format!("raid1 {n} {params} {} {}", legs.len(), legs.join(" "));
                typed("raid", rows * region, line)
            }),
        (
            3u32..=10,
            1u64..1 << 20,
            prop::collection::vec(pair(), 2..=6)
        )
            .prop_map(|(shift, rows, legs)| {
                let line = format!(
                    "raid0 1 {} {} {}",
                    1u32 << shift,
                    legs.len(),
                    legs.join(" ")
                );
                typed("raid", rows * legs.len() as u64, line)
            }),
    ]
}

/// `era` with any block size the kernel takes (a non-zero multiple of 8).
pub fn era() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 40,
        device_ref(),
        device_ref(),
        1u32..=u32::MAX / 8,
    )
        .prop_map(|(len, meta, origin, blocks)| {
            typed("era", len, format!("{meta} {origin} {}", blocks * 8))
        })
}

/// `clone` with any power-of-two region size from 8 to 2^21 sectors (at most 2^31 regions),
/// a spread of feature and core groups (names in any case, the region size and values
/// written with leading zeros at times) and ignored tokens after them.
pub fn clone() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 40,
        (device_ref(), device_ref(), device_ref()),
        (3u32..=21, prop::bool::ANY),
        prop::option::of((
            prop::sample::subsequence(vec!["no_hydration", "No_Discard_Passdown"], 0..=2),
            prop::option::of((
                prop::sample::subsequence(
                    vec![("hydration_threshold", 0u32), ("HYDRATION_BATCH_SIZE", 1)],
                    0..=2,
                ),
                any::<u32>(),
                // Ignored tokens, some holding a space (written escaped).
                prop::collection::vec("[a-z0-9_]([a-z0-9_ ]{0,6}[a-z0-9_])?", 0..3),
            )),
        )),
    )
        .prop_map(|(len, (meta, dest, src), (shift, padded), groups)| {
            let region = 1u64 << shift;
            let len = len.min(region << 31);
            let zero = if padded { "0" } else { "" };
            let mut params = format!("{meta} {dest} {src} {zero}{region}");
            if let Some((features, core)) = groups {
                params.push_str(&format!(" {}", features.len()));
                for f in &features {
                    params.push_str(&format!(" {f}"));
                }
                if let Some((pairs, value, extra)) = core {
                    params.push_str(&format!(" {}", pairs.len() * 2));
                    for (name, k) in pairs {
                        params.push_str(&format!(" {name} {zero}{}", value >> k));
                    }
                    for e in extra {
                        params.push_str(&format!(" {}", crate::table::lexer::escape(&e)));
                    }
                }
            }
            typed("clone", len, params)
        })
}

/// `writecache` in SSD mode with any block size and a spread of options.
pub fn writecache() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 40,
        device_ref(),
        device_ref(),
        9u32..=12,
        prop::option::of(any::<u32>()),
        prop::option::of((0u32..=45, 50u32..=100)),
        prop::sample::select(vec![
            "",
            " cleaner",
            " metadata_only",
            " cleaner metadata_only",
        ]),
        prop::option::of(0u32..=60_000),
    )
        .prop_map(|(len, origin, cache, shift, start, wm, flags, pause)| {
            let mut opts = Vec::new();
            if let Some(s) = start {
                opts.push(format!("start_sector {s}"));
            }
            if let Some((low, high)) = wm {
                opts.push(format!("high_watermark {high} low_watermark {low}"));
            }
            if !flags.is_empty() {
                opts.push(flags.trim_start().to_string());
            }
            if let Some(p) = pause {
                opts.push(format!("pause_writeback {p}"));
            }
            let joined = opts.join(" ");
            let n = joined.split_whitespace().count();
            let params = format!("s {origin} {cache} {} {n} {joined}", 1u32 << shift);
            typed("writecache", len, params.trim_end().to_string())
        })
}

/// `ebs` with and without `<ubs>`, in the sizes the kernel takes (a length of whole
/// emulated blocks, an offset of whole underlying blocks).
pub fn ebs() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 32,
        device_ref(),
        0u32..=3,
        prop::option::of(0u32..=15),
        any::<u32>(),
    )
        .prop_map(|(blocks, dev, e, u, off)| {
            let ebs = 1u64 << e;
            let ubs = u.map(|u| 1u64 << u);
            let offset = u64::from(off) * ubs.unwrap_or(1);
            let mut params = format!("{dev} {offset} {ebs}");
            if let Some(ubs) = ubs {
                params.push_str(&format!(" {ubs}"));
            }
            typed("ebs", blocks * ebs, params)
        })
}

/// `cache` in the forms the kernel prints back as given: feature words, a policy and its
/// key/value pairs.
pub fn cache() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 32,
        (device_ref(), device_ref(), device_ref()),
        6u32..=21,
        prop::sample::subsequence(vec!["metadata2", "no_discard_passdown"], 0..=2),
        prop::sample::select(vec!["", "writeback", "writethrough", "passthrough"]),
        prop::sample::select(vec!["smq", "default", "cleaner", "mq"]),
        prop::option::of(1u32..100_000),
    )
        .prop_map(
            |(len, (meta, cache, origin), shift, mut features, mode, policy, mig)| {
                if !mode.is_empty() {
                    features.push(mode);
                }
                let mut params = format!("{meta} {cache} {origin} {}", 1u64 << shift);
                params.push_str(&format!(" {}", features.len()));
                for f in &features {
                    params.push_str(&format!(" {f}"));
                }
                match mig {
                    Some(m) => params.push_str(&format!(" {policy} 2 migration_threshold {m}")),
                    None => params.push_str(&format!(" {policy} 0")),
                }
                typed("cache", len, params)
            },
        )
}

/// `thin` with and without an external origin.
pub fn thin() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 32, two_devices(), 0u32..1 << 24, prop::bool::ANY).prop_map(
        |(len, (pool, origin), id, with_origin)| {
            let origin = if with_origin {
                format!(" {origin}")
            } else {
                String::new()
            };
            typed("thin", len, format!("{pool} {id}{origin}"))
        },
    )
}

/// `thin-pool` (a singleton) with up to four of its feature words.
pub fn thin_pool() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 32,
        two_devices(),
        1u64..=16384,
        any::<u32>(),
        prop::sample::subsequence(
            vec![
                "skip_block_zeroing",
                "ignore_discard",
                "no_discard_passdown",
                "read_only",
                "error_if_no_space",
            ],
            0..=4,
        ),
    )
        .prop_map(|(len, (meta, data), block, low, features)| {
            let mut params = format!("{meta} {data} {} {low}", block * 128);
            if !features.is_empty() {
                params.push_str(&format!(" {}", features.len()));
                for f in &features {
                    params.push_str(&format!(" {f}"));
                }
            }
            typed("thin-pool", len, params)
        })
}

/// `crypt` over a spread of cipher specs (both forms), key lengths, sector sizes and
/// options.
pub fn crypt() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    let ciphers = prop::sample::select(vec![
        ("aes-xts-plain64", 64usize),
        ("aes-xts-plain64", 32),
        ("aes-cbc-essiv:sha256", 32),
        ("aes-cbc-plain", 24),
        ("aes-cbc-plain64be", 16),
        ("aes-ecb", 16),
        ("serpent-xts-plain64", 64),
        ("twofish-cbc-benbi", 32),
        ("camellia-cbc-eboiv", 16),
        ("aes:2-xts-plain64", 128),
        ("capi:xts(aes)-plain64", 64),
        ("capi:cbc(aes)-essiv:sha256", 32),
    ]);
    (
        1u64..1 << 24,
        ciphers,
        prop::collection::vec(any::<u8>(), 128),
        0u32..=3,
        0u64..1 << 20,
        dev_off(),
        prop::sample::subsequence(
            vec![
                "allow_discards",
                "same_cpu_crypt",
                "high_priority",
                "submit_from_crypt_cpus",
                "no_read_workqueue",
                "no_write_workqueue",
                "iv_large_sectors",
            ],
            0..=7,
        ),
    )
        .prop_map(|(units, (cipher, keylen), key, shift, iv, dest, flags)| {
            let sector = 512u64 << shift;
            let per = sector / 512;
            let hex: String = key[..keylen].iter().map(|b| format!("{b:02x}")).collect();
            let mut opts: Vec<String> = flags.iter().map(|f| (*f).to_string()).collect();
            if shift > 0 {
                opts.push(format!("sector_size:{sector}"));
            }
            let mut params = format!("{cipher} {hex} {} {dest}", iv * per);
            if !opts.is_empty() {
                params.push_str(&format!(" {} {}", opts.len(), opts.join(" ")));
            }
            typed("crypt", units * per, params)
        })
}

/// Any target that may share a table with others, with a length it is valid for.
pub fn shareable_target() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    prop_oneof![
        target_with_len(),
        delay(),
        flakey(),
        dust(),
        crypt(),
        snapshot(),
        snapshot_origin(),
        thin(),
        log_writes(),
        unstriped(),
        switch(),
        ebs(),
        cache(),
        mirror(),
        raid(),
        era(),
        clone(),
        writecache()
    ]
}

/// `zoned` (a singleton) over one to four devices.
pub fn zoned() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (1u64..1 << 40, prop::collection::vec(device_ref(), 1..=4)).prop_map(|(len, devs)| {
        let devs: Vec<String> = devs.iter().map(ToString::to_string).collect();
        typed("zoned", len, devs.join(" "))
    })
}

/// `vdo` V4 (a singleton) with a spread of key/value pairs the kernel takes.
pub fn vdo() -> impl Strategy<Value = (SectorCount, TargetSpec)> {
    (
        1u64..1 << 30,
        device_ref(),
        any::<u64>(),
        prop::bool::ANY,
        (4096u32..=u32::MAX, any::<u32>()),
        prop::sample::subsequence(
            vec![
                "deduplication off",
                "compression on",
                "maxDiscard 8",
                "ack 2",
                "bio 3",
                "bioRotationInterval 9",
                "cpu 2",
                "logical 1 physical 1 hash 1",
            ],
            0..=8,
        ),
    )
        .prop_map(|(blocks, dev, phys, small, (cache, period), opts)| {
            let lbs = if small { 512 } else { 4096 };
            let mut params = format!("V4 {dev} {phys} {lbs} {cache} {period}");
            for o in opts {
                params.push(' ');
                params.push_str(o);
            }
            typed("vdo", blocks * 8, params)
        })
}

/// A one-line table of a singleton target (verity, thin-pool, zoned or vdo).
pub fn singleton_table() -> impl Strategy<Value = Table> {
    prop_oneof![verity(), thin_pool(), zoned(), vdo()].prop_map(|(len, spec)| Table {
        lines: vec![TableLine {
            start: Sector(0),
            len,
            spec,
        }],
    })
}

/// Any valid table: many shareable lines, or one singleton line.
pub fn any_table() -> impl Strategy<Value = Table> {
    prop_oneof![4 => table(), 1 => singleton_table()]
}

/// A valid multi-line table: contiguous from sector 0, 1 to 12 lines.
pub fn table() -> impl Strategy<Value = Table> {
    prop::collection::vec(shareable_target(), 1..12).prop_map(|specs| {
        let mut start = 0u64;
        let lines = specs
            .into_iter()
            .map(|(len, spec)| {
                let line = TableLine {
                    start: Sector(start),
                    len,
                    spec,
                };
                start += len.0;
                line
            })
            .collect();
        Table { lines }
    })
}
