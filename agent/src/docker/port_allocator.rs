//! Host ports for the bindings that name none (`docker run -p 80`, `-P`: dockerd sends host
//! port 0 and leaves the choice to the driver), chosen as Docker's own port allocator
//! (libnetwork's `portallocator`) chooses them for its bridge driver:
//!
//! - from the host's ephemeral port range, `net.ipv4.ip_local_port_range` of the namespace
//!   the agent serves (32768-60999 on a stock Linux host), or 49153-60999 when it cannot be
//!   read (libnetwork's fallback);
//! - per protocol, round robin: the first port after the last one chosen that no container
//!   publishes on this host (on the same or on every address), wrapping around once.
//!
//! Like dockerd's, the position is kept in memory only: a restarted agent starts again at the
//! range's first port, skipping what is published.
use std::{collections::HashMap, ops::RangeInclusive, path::Path};

use anyhow::{bail, Context, Result};

use crate::host::publish::Protocol;

/// libnetwork's range when the kernel's cannot be read.
pub const FALLBACK_RANGE: RangeInclusive<u16> = 49153..=60999;
/// The kernel's ephemeral ports of the namespace that reads it.
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    /// The last port chosen, per protocol.
    last: HashMap<Protocol, u16>,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> PortAllocator {
        PortAllocator { range, last: HashMap::new() }
    }

    /// The range of the namespace this process runs in (the agent's host), or the fallback,
    /// with a warning saying why.
    pub fn for_this_host() -> PortAllocator {
        let range = read_range(Path::new(EPHEMERAL_RANGE)).unwrap_or_else(|e| {
            tracing::warn!(
                "{e:#}; Docker bindings without a host port take one from {}-{}",
                FALLBACK_RANGE.start(),
                FALLBACK_RANGE.end()
            );
            FALLBACK_RANGE
        });
        PortAllocator::new(range)
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.range.clone()
    }

    /// The first port after the last one chosen for `protocol` that `is_free` accepts, going
    /// round the range once; None when every port of it is taken.
    pub fn next(&mut self, protocol: Protocol, is_free: impl Fn(u16) -> bool) -> Option<u16> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let mut port = self.last.get(&protocol).copied().unwrap_or(last);
        for _ in first..=last {
            port = if port >= last || port < first { first } else { port + 1 };
            if is_free(port) {
                self.last.insert(protocol, port);
                return Some(port);
            }
        }
        None
    }
}

fn read_range(path: &Path) -> Result<RangeInclusive<u16>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_range(&text).with_context(|| format!("reading {}", path.display()))
}

/// `ip_local_port_range`'s two numbers (`32768\t60999`).
fn parse_range(text: &str) -> Result<RangeInclusive<u16>> {
    let ports: Vec<u16> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not two port numbers"))?;
    match ports.as_slice() {
        [first, last] if 0 < *first && first <= last => Ok(*first..=*last),
        _ => bail!("{text:?} is not a port range (two port numbers, the first not above the second)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_from_the_first_port_skipping_taken_ones() {
        let mut ports = PortAllocator::new(100..=103);
        let taken = [101];
        let free = |p: u16| !taken.contains(&p);
        assert_eq!(ports.next(Protocol::Tcp, free), Some(100));
        assert_eq!(ports.next(Protocol::Tcp, free), Some(102), "101 is taken");
        // Each protocol has its own position.
        assert_eq!(ports.next(Protocol::Udp, free), Some(100));
        assert_eq!(ports.next(Protocol::Tcp, free), Some(103));
        // Wraps around; a port freed behind the position is found on the next round.
        assert_eq!(ports.next(Protocol::Tcp, |_| true), Some(100));
        assert_eq!(ports.next(Protocol::Tcp, |p| p == 100), Some(100), "once round the range");
        assert_eq!(ports.next(Protocol::Tcp, |_| false), None);
    }

    #[test]
    fn the_kernels_range_is_read_or_refused() {
        assert_eq!(parse_range("32768\t60999\n").unwrap(), 32768..=60999);
        assert_eq!(parse_range("1024 1024").unwrap(), 1024..=1024);
        for bad in ["", "32768", "60999 32768", "0 10", "a b", "1 2 3", "70000 80000"] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
        assert!(read_range(Path::new("/nonexistent/ip_local_port_range")).is_err());
    }
}
