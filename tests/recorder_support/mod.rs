//! A metadata volume that logs every write, so a test can replay a commit cut short at each
//! point (shared by thin_write.rs and cache_kernel.rs).

use dmemu::{MemVolume, Sector, SectorCount, Volume};

/// A `MemVolume` whose writes are also logged, in order.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The volume written.
    pub(crate) inner: MemVolume,
    /// Every write: where and what.
    pub(crate) log: std::sync::Mutex<Vec<(Sector, Vec<u8>)>>,
}

impl Recorder {
    /// A recorder over `inner` with an empty log.
    pub(crate) fn new(inner: MemVolume) -> Recorder {
        Recorder {
            inner,
            log: Default::default(),
        }
    }

    /// The writes logged since the last call.
    pub(crate) fn take(&self) -> Vec<(Sector, Vec<u8>)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Volume for Recorder {
    fn size(&self) -> SectorCount {
        self.inner.size()
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> dmemu::Result<()> {
        self.inner.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> dmemu::Result<()> {
        self.log.lock().unwrap().push((sector, buf.to_vec()));
        self.inner.write(sector, buf)
    }
    fn flush(&self) -> dmemu::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> dmemu::Result<()> {
        self.inner.discard(sector, count)
    }
}
