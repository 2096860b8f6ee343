//! `multipath`: several paths to one device in priority groups (kernel dm-mpath.c, v1.14.0,
//! with the round-robin, queue-length and service-time path selectors).
//!
//! Table args: `<#features> <feature>... <#hw_handler_args> [<hw_handler> <arg>...]
//! <#priority_groups> <initial_pg> (<selector> <#selector_args> <arg>... <#paths>
//! <#path_args> (<dev> <arg>...){#paths})...`.
//!
//! Typed as `multipath_ctr` reads the line, with the kernel's words: features
//! (`queue_if_no_path`, `retain_attached_hw_handler`, `pg_init_retries` 1–50,
//! `pg_init_delay_msecs` 0–60000, `queue_mode bio|rq|mq`, case-insensitive, repeats allowed),
//! the hardware handler (its arguments are dropped from the table, and a bio-based table
//! drops the handler too), the group counts, each group's selector and paths with the
//! selector's own checks. The table prints as `multipath_status` does: the feature count it
//! computes and the features in its order (a bio-based table always has
//! `retain_attached_hw_handler`), `1 <handler>` or `0`, the groups with their selector
//! arguments dropped, each path's repeat count (a count above 1 is 1, as 6.12 forces it)
//! and service-time's relative throughput (1 when not given), every word followed by a
//! space. Lines whose groups use the historical-service-time or io-affinity selectors are
//! kept verbatim. Multipath I/O is not executed.

use std::fmt;

use crate::table::args::{ArgResult, Args};

use super::DeviceRef;

/// `DM_PG_INIT_DELAY_DEFAULT`: no delay given.
const PG_INIT_DELAY_DEFAULT: u32 = u32::MAX;

/// The path selectors typed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `round-robin`
    RoundRobin,
    /// `queue-length`
    QueueLength,
    /// `service-time`
    ServiceTime,
}

impl Selector {
    fn name(self) -> &'static str {
        match self {
            Selector::RoundRobin => "round-robin",
            Selector::QueueLength => "queue-length",
            Selector::ServiceTime => "service-time",
        }
    }
}

/// One path: its device, repeat count and (service-time) relative throughput.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// The device.
    pub device: DeviceRef,
    /// I/Os before switching path (0 or 1: 6.12 turns larger counts into 1).
    pub repeat_count: u32,
    /// service-time's relative throughput (0–100).
    pub relative_throughput: u32,
}

/// One priority group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its path selector.
    pub selector: Selector,
    /// Its paths, in order.
    pub paths: Vec<Path>,
}

/// Parsed `multipath` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipathArgs {
    /// `queue_if_no_path`
    pub queue_if_no_path: bool,
    /// `retain_attached_hw_handler` (set for every bio-based table)
    pub retain_attached_hw_handler: bool,
    /// `pg_init_retries` (0: not given)
    pub pg_init_retries: u32,
    /// `pg_init_delay_msecs` (`u32::MAX`: not given)
    pub pg_init_delay_msecs: u32,
    /// `queue_mode bio`
    pub bio_based: bool,
    /// The hardware handler's name (request-based tables only).
    pub hw_handler: Option<String>,
    /// The initial priority group number as printed.
    pub initial_pg: u32,
    /// The priority groups.
    pub groups: Vec<Group>,
}

impl MultipathArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "multipath";

    /// Parse like `multipath_ctr` (device lookups and the hardware handler's attachment
    /// happen at build). `None`: a group uses a selector not typed here, and the line is
    /// kept verbatim.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<Option<MultipathArgs>> {
        let mut m = MultipathArgs {
            queue_if_no_path: false,
            retain_attached_hw_handler: false,
            pg_init_retries: 0,
            pg_init_delay_msecs: PG_INIT_DELAY_DEFAULT,
            bio_based: false,
            hw_handler: None,
            initial_pg: 0,
            groups: Vec::new(),
        };
        // parse_features
        let mut feats = args.group(0..=8, "invalid number of feature args")?;
        while feats.remaining() > 0 {
            let name = feats.next("")?;
            let more = feats.remaining() >= 1;
            if name.eq_ignore_ascii_case("queue_if_no_path") {
                m.queue_if_no_path = true;
            } else if name.eq_ignore_ascii_case("retain_attached_hw_handler") {
                m.retain_attached_hw_handler = true;
            } else if name.eq_ignore_ascii_case("pg_init_retries") && more {
                m.pg_init_retries =
                    feats.scan_arg_in(1..=50, "pg_init_retries must be between 1 and 50")?;
            } else if name.eq_ignore_ascii_case("pg_init_delay_msecs") && more {
                m.pg_init_delay_msecs = feats.scan_arg_in(
                    0..=60_000,
                    "pg_init_delay_msecs must be between 0 and 60000",
                )?;
            } else if name.eq_ignore_ascii_case("queue_mode") && more {
                let mode = feats.next("")?;
                if mode.eq_ignore_ascii_case("bio") {
                    m.bio_based = true;
                } else if mode.eq_ignore_ascii_case("rq") || mode.eq_ignore_ascii_case("mq") {
                    m.bio_based = false;
                } else {
                    return Err(feats.error_last("Unknown 'queue_mode' requested"));
                }
            } else {
                return Err(feats.error_last("Unrecognised multipath feature request"));
            }
        }
        if m.bio_based {
            m.retain_attached_hw_handler = true;
        }
        // parse_hw_handler
        let mut hw = args.group(0..=1024, "invalid number of hardware handler args")?;
        if hw.remaining() > 0 && !m.bio_based {
            m.hw_handler = Some(hw.next("")?.to_string());
        }
        let nr_groups = args.scan_arg_in(0..=1024, "invalid number of priority groups")?;
        let next_pg = args.scan_arg_in(0..=1024, "invalid initial priority group number")?;
        if (nr_groups == 0) != (next_pg == 0) {
            return Err(args.error_last("invalid initial priority group"));
        }
        let mut untyped = false;
        let mut pg_count = 0usize;
        while args.remaining() > 0 {
            pg_count += 1;
            if args.remaining() < 2 {
                return Err(args.error_at(args.position(), "not enough priority group arguments"));
            }
            let name = args.next("")?;
            let selector = match name {
                "round-robin" => Some(Selector::RoundRobin),
                "queue-length" => Some(Selector::QueueLength),
                "service-time" => Some(Selector::ServiceTime),
                "historical-service-time" | "io-affinity" => None,
                _ => return Err(args.error_last("unknown path selector type")),
            };
            args.group(0..=1024, "invalid number of path selector args")?;
            let nr_paths = args.scan_arg_in(1..=1024, "invalid number of paths")?;
            let nr_sel = args.scan_arg_in(0..=1024, "invalid number of selector args")?;
            let mut paths = Vec::new();
            for _ in 0..nr_paths {
                if args.remaining() < 1 + nr_sel as usize {
                    return Err(args.error_at(args.position(), "not enough path parameters"));
                }
                let mut p = args.take(1 + nr_sel as usize);
                let device = DeviceRef::parse(&mut p, "no device given")?;
                let Some(selector) = selector else {
                    continue;
                };
                paths.push(add_path(selector, device, &mut p)?);
            }
            match selector {
                Some(selector) => m.groups.push(Group { selector, paths }),
                None => untyped = true,
            }
        }
        if pg_count != nr_groups as usize {
            return Err(Args::error("priority group count mismatch"));
        }
        if untyped {
            return Ok(None);
        }
        m.initial_pg = if next_pg as usize <= m.groups.len() {
            next_pg
        } else {
            u32::from(nr_groups > 0)
        };
        Ok(Some(m))
    }

    /// The paths' devices, group by group.
    #[must_use]
    pub fn devices(&self) -> Vec<String> {
        self.groups
            .iter()
            .flat_map(|g| g.paths.iter().map(|p| p.device.0.clone()))
            .collect()
    }
}

/// The selector's `add_path`: its argument count, repeat count and throughput checks.
fn add_path(selector: Selector, device: DeviceRef, p: &mut Args<'_>) -> ArgResult<Path> {
    let name = selector.name();
    let max_args = if selector == Selector::ServiceTime {
        2
    } else {
        1
    };
    if p.remaining() > max_args {
        return Err(p.error_at(
            p.position(),
            format!("{name} ps: incorrect number of arguments"),
        ));
    }
    let mut repeat_count = 1;
    if p.remaining() > 0 {
        repeat_count = p.scan_u32(&format!("{name} ps: invalid repeat count"))?;
    }
    let mut relative_throughput = 1;
    if p.remaining() > 0 {
        relative_throughput =
            p.scan_u32("").ok().filter(|&v| v <= 100).ok_or_else(|| {
                p.error_last(format!("{name} ps: invalid relative_throughput value"))
            })?;
    }
    Ok(Path {
        device,
        repeat_count: repeat_count.min(1),
        relative_throughput,
    })
}

impl fmt::Display for MultipathArgs {
    /// `multipath_status` STATUSTYPE_TABLE, every word followed by a space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delay = self.pg_init_delay_msecs != PG_INIT_DELAY_DEFAULT;
        let n = u32::from(self.queue_if_no_path)
            + 2 * u32::from(self.pg_init_retries > 0)
            + 2 * u32::from(delay)
            + u32::from(self.retain_attached_hw_handler)
            + 2 * u32::from(self.bio_based);
        write!(f, "{n} ")?;
        if self.queue_if_no_path {
            f.write_str("queue_if_no_path ")?;
        }
        if self.pg_init_retries > 0 {
            write!(f, "pg_init_retries {} ", self.pg_init_retries)?;
        }
        if delay {
            write!(f, "pg_init_delay_msecs {} ", self.pg_init_delay_msecs)?;
        }
        if self.retain_attached_hw_handler {
            f.write_str("retain_attached_hw_handler ")?;
        }
        if self.bio_based {
            f.write_str("queue_mode bio ")?;
        }
        match &self.hw_handler {
            Some(h) => write!(f, "1 {} ", DeviceRef(h.clone()))?,
            None => f.write_str("0 ")?,
        }
        write!(f, "{} {} ", self.groups.len(), self.initial_pg)?;
        for g in &self.groups {
            let table_args = if g.selector == Selector::ServiceTime {
                2
            } else {
                1
            };
            write!(f, "{} 0 {} {table_args} ", g.selector.name(), g.paths.len())?;
            for p in &g.paths {
                write!(f, "{} {} ", p.device, p.repeat_count)?;
                if g.selector == Selector::ServiceTime {
                    write!(f, "{} ", p.relative_throughput)?;
                }
            }
        }
        Ok(())
    }
}
