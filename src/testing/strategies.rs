//! proptest strategies generating valid tables of every typed target, for round-trip tests
//! here and for projects that build dm tables.

use proptest::prelude::*;

use crate::table::{Table, TableLine};
use crate::targets::{DeviceAt, DeviceRef, LinearArgs, OtherArgs, StripedArgs, TargetSpec};
use crate::units::{Sector, SectorCount};

/// Untyped kernel targets that may share a table with others (not singletons).
const OTHER_TYPES: &[&str] = &[
    "cache",
    "clone",
    "ebs",
    "era",
    "log-writes",
    "mirror",
    "raid",
    "switch",
    "unstriped",
    "writecache",
];

/// A device reference: a path, a name or `major:minor`. Paths may contain spaces and
/// backslashes (printed escaped) but never `#` (dmsetup starts a comment there).
pub fn device_ref() -> impl Strategy<Value = DeviceRef> {
    prop_oneof![
        "/dev/[a-z]{2,5}[0-9]{0,2}",
        "[a-z][a-z0-9_.-]{0,12}",
        "(/[a-zA-Z0-9 _.\\\\-]{1,8}){1,3}",
        (0u32..300, 0u32..1000).prop_map(|(a, b)| format!("{a}:{b}")),
    ]
    .prop_map(DeviceRef)
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
        (
            1u64..1 << 40,
            prop::sample::select(OTHER_TYPES),
            prop::collection::vec("[a-zA-Z0-9:/._-]{1,10}", 0..8)
        )
            .prop_map(|(len, t, tokens)| {
                let params = tokens.join(" ");
                (
                    SectorCount(len),
                    TargetSpec::Other(OtherArgs::new(t, &tokens, &params)),
                )
            }),
    ]
}

/// A valid multi-line table: contiguous from sector 0, 1 to 12 lines.
pub fn table() -> impl Strategy<Value = Table> {
    prop::collection::vec(target_with_len(), 1..12).prop_map(|specs| {
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
