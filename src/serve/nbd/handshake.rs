//! NBD handshake, first part: the server's fixed-newstyle greeting and the client's flags.
//! Oldstyle and plain newstyle are not offered.

use std::io::{self, Read, Write};

use super::{protocol_error, IHAVEOPT, NBDMAGIC};

/// NBD_FLAG_FIXED_NEWSTYLE.
const FIXED_NEWSTYLE: u16 = 1 << 0;
/// NBD_FLAG_NO_ZEROES.
const NO_ZEROES: u16 = 1 << 1;

/// What the client said it supports.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientFlags {
    /// NBD_FLAG_C_NO_ZEROES: no 124 zero bytes after an NBD_OPT_EXPORT_NAME reply.
    pub(super) no_zeroes: bool,
}

/// Send the greeting and read the client flags; unknown client flags end the connection,
/// as the protocol requires.
pub(super) fn greet(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<ClientFlags> {
    let mut hello = [0u8; 18];
    hello[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..].copy_from_slice(&(FIXED_NEWSTYLE | NO_ZEROES).to_be_bytes());
    writer.write_all(&hello)?;
    writer.flush()?;
    let mut flags = [0u8; 4];
    reader.read_exact(&mut flags)?;
    let flags = u32::from_be_bytes(flags);
    let known = u32::from(FIXED_NEWSTYLE | NO_ZEROES);
    if flags & !known != 0 {
        return Err(protocol_error(format!("unknown client flags {flags:#x}")));
    }
    Ok(ClientFlags {
        no_zeroes: flags & u32::from(NO_ZEROES) != 0,
    })
}
