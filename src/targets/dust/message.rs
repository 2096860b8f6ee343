//! `dust_message` and `dust_status`: the kernel's replies word for word.

use std::fmt::Write as _;

use crate::error::Result;
use crate::table::args::{scan_llu, scan_u32};
use crate::targets::Target;

use super::{msg_error, Dust};

impl Target for Dust {
    /// `<dev> <fail_read_on_bad_block|bypass> <quiet|verbose>`.
    fn status(&self) -> String {
        let st = self.lock();
        format!(
            "{} {} {}",
            self.args.dest.device,
            if st.fail_read_on_bad_block {
                "fail_read_on_bad_block"
            } else {
                "bypass"
            },
            if st.quiet { "quiet" } else { "verbose" }
        )
    }

    /// `dust_message`: the kernel's replies word for word.
    fn message(&self, argv: &[&str]) -> Result<String> {
        let is = |i: usize, s: &str| argv[i].eq_ignore_ascii_case(s);
        match argv.len() {
            0 => Err(msg_error("Empty message received.")),
            1 => {
                if is(0, "addbadblock") || is(0, "removebadblock") || is(0, "queryblock") {
                    Err(msg_error(format!(
                        "{} requires an additional argument",
                        argv[0]
                    )))
                } else if is(0, "disable") || is(0, "enable") {
                    self.lock().fail_read_on_bad_block = is(0, "enable");
                    Ok(String::new())
                } else if is(0, "countbadblocks") {
                    let n = self.lock().bad.len();
                    Ok(format!("countbadblocks: {n} badblock(s) found"))
                } else if is(0, "clearbadblocks") {
                    let cleared = std::mem::take(&mut self.lock().bad);
                    Ok(if cleared.is_empty() {
                        "dust_clear_badblocks: no badblocks found".to_string()
                    } else {
                        "dust_clear_badblocks: badblocks cleared".to_string()
                    })
                } else if is(0, "quiet") {
                    let mut st = self.lock();
                    st.quiet = !st.quiet;
                    Ok(String::new())
                } else if is(0, "listbadblocks") {
                    let st = self.lock();
                    if st.bad.is_empty() {
                        return Ok("No blocks in badblocklist".to_string());
                    }
                    let mut out = String::new();
                    for block in st.bad.keys() {
                        let _ = writeln!(out, "{block}");
                    }
                    Ok(out)
                } else {
                    Err(msg_error(format!(
                        "unrecognized message '{}' received",
                        crate::error::clip(argv[0])
                    )))
                }
            }
            2 => {
                let block = self.parse_block(argv[1])?;
                if is(0, "addbadblock") {
                    self.add_block(block, 0)
                } else if is(0, "removebadblock") {
                    match self.lock().bad.remove(&block) {
                        Some(_) => Ok(String::new()),
                        None => Err(msg_error(format!(
                            "dust_remove_block: block {block} not found in badblocklist"
                        ))),
                    }
                } else if is(0, "queryblock") {
                    let found = self.lock().bad.contains_key(&block);
                    Ok(format!(
                        "dust_query_block: block {block} {}found in badblocklist",
                        if found { "" } else { "not " }
                    ))
                } else {
                    Err(msg_error(format!(
                        "unrecognized message '{}' received",
                        crate::error::clip(argv[0])
                    )))
                }
            }
            3 => {
                let block = scan_llu(argv[1]).ok_or_else(|| msg_error("Invalid argument"))?;
                let fails = scan_u32(argv[2]).ok_or_else(|| msg_error("Invalid argument"))?;
                let fails = u8::try_from(fails)
                    .map_err(|_| msg_error("selected write fail count out of range"))?;
                if block > self.max_block() {
                    return Err(msg_error("selected block value out of range"));
                }
                if is(0, "addbadblock") {
                    self.add_block(block, fails)
                } else {
                    Err(msg_error(format!(
                        "unrecognized message '{}' received",
                        crate::error::clip(argv[0])
                    )))
                }
            }
            n => Err(msg_error(format!("invalid number of arguments '{n}'"))),
        }
    }
}
