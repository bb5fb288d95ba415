//! The datapath's events (`bpfnet monitor`): the pinned ring buffer the programs write drops
//! and new flows to, and the CONFIG bits that make them write.
use aya::maps::RingBuf;
use datapath_common::{host_config_flags, DatapathEvent};
use tokio::io::unix::AsyncFd;

use super::*;

/// The reading end of the `EVENTS` ring buffer. The agent holds the only one.
pub struct EventRing {
    ring: AsyncFd<RingBuf<MapData>>,
    map_id: u32,
}

impl EventRing {
    /// Opens the ring buffer pinned under `pin_dir` (needs a tokio runtime).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join("maps").join(map_names::EVENTS);
        let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let map_id = data.info()?.id();
        let ring = RingBuf::try_from(Map::RingBuf(data))
            .with_context(|| format!("{} is not a ring buffer", path.display()))?;
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open while registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .with_context(|| format!("watching {}", path.display()))?;
        Ok(Self { ring, map_id })
    }

    /// The kernel's id of the map: a datapath removed and loaded again has a new one.
    pub fn map_id(&self) -> u32 {
        self.map_id
    }

    /// Waits until events are there and takes all of them.
    pub async fn next_batch(&mut self) -> Result<Vec<DatapathEvent>> {
        let mut guard = self.ring.readable_mut().await.context("waiting on the event ring buffer")?;
        let mut events = Vec::new();
        drain(guard.get_inner_mut(), &mut events);
        guard.clear_ready();
        // What was written between the drain and clearing the readiness woke nobody: the
        // kernel wakes the reader only when it has caught up. Once caught up, it will.
        drain(guard.get_inner_mut(), &mut events);
        Ok(events)
    }
}

fn drain(ring: &mut RingBuf<MapData>, events: &mut Vec<DatapathEvent>) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<DatapathEvent>() {
            // SAFETY: the programs write whole `DatapathEvent`s (plain data, any bit pattern
            // valid); the length was checked.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DatapathEvent) });
        }
    }
}

/// The id of the map pinned as `name`, if there is one.
pub fn pinned_map_id(pin_dir: &Path, name: &str) -> Option<u32> {
    MapData::from_pin(pin_dir.join("maps").join(name)).ok()?.info().ok().map(|info| info.id())
}

impl Datapath {
    /// Sets which events the programs write (`host_config_flags::EVENTS_*`), leaving the
    /// other settings as they are.
    pub fn set_event_flags(&mut self, events: u32) -> Result<()> {
        let mut config = self.config()?;
        let flags = (config.flags & !host_config_flags::EVENTS) | (events & host_config_flags::EVENTS);
        if flags != config.flags {
            config.flags = flags;
            self.set_config(&config)?;
        }
        Ok(())
    }
}
