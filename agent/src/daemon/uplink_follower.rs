//! Follows the uplink while the agent runs. Its IPv4 address is the masquerade (and published
//! port) address, its global IPv6 address IPv6's, and its ifindex is where the uplink program
//! runs, so the datapath must follow the interface as it changes: a DHCP client renumbering
//! it, SLAAC or DAD settling an IPv6 address, an administrator making it again.
//!
//! The kernel notifies every link and address change of the host namespace (rtnetlink
//! multicast, see [`LinkEvents`]); those about the uplink, by name or ifindex, trigger
//! [`Host::sync_uplink`](crate::host::Host::sync_uplink), once per burst. A slow periodic
//! resync covers whatever the notifications could still miss; notifications the kernel had to
//! drop (ENOBUFS) trigger one at once.
use std::time::Duration;

use anyhow::Result;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::{
    daemon::SharedHost,
    sys::netlink::{LinkEvent, LinkEvents},
};

/// Notifications within this long of the first one are handled together: replacing an address
/// (delete, add), or deleting the uplink and making it again, comes as several notifications
/// within microseconds, and one sync after the last of them is what counts.
const SETTLE: Duration = Duration::from_millis(75);

/// The safety net: the uplink is synced this often whatever the notifications said.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

pub struct UplinkFollower {
    uplink: String,
    /// `None` after the subscription failed; tried again at each periodic resync.
    events: Option<LinkEvents>,
    /// The uplink's ifindex when last looked up: a notification about an address names only
    /// the link's index (and a label), and one about a link may not name the link.
    index: Option<u32>,
}

/// Why the uplink is synced, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Changed,
    NotificationsLost,
    Periodic,
}

impl UplinkFollower {
    /// Subscribes to the host namespace's link and address notifications (the agent's threads
    /// all live in it, see `HostOptions::enter_host_netns`). The agent calls this before it
    /// first syncs the uplink, so that no change after that sync goes unnoticed. A failure is
    /// logged, and the periodic resync then follows the uplink alone until a subscription
    /// succeeds.
    pub fn subscribe(uplink: &str) -> Self {
        Self { uplink: uplink.to_owned(), events: subscribe(), index: None }
    }

    /// Follows the uplink for as long as the agent runs.
    pub async fn run(mut self, host: SharedHost) {
        self.index = uplink_index(&host, &self.uplink).await;
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = resync.tick() => None,
                event = next_event(&mut self.events) => Some(event),
            };
            let reason = match event {
                None => {
                    if self.events.is_none() {
                        self.events = subscribe();
                    }
                    Reason::Periodic
                }
                Some(Ok(event)) if concerns_uplink(&event, &self.uplink, self.index) => self.settle(event).await,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.lose_subscription(e);
                    continue;
                }
            };
            self.sync(&host, reason).await;
        }
    }

    /// Takes in the notifications that follow `first` within [`SETTLE`], and says why to sync.
    async fn settle(&mut self, first: LinkEvent) -> Reason {
        let mut lost = first == LinkEvent::Lost;
        let deadline = Instant::now() + SETTLE;
        loop {
            let event = tokio::select! {
                _ = sleep_until(deadline) => break,
                event = next_event(&mut self.events) => event,
            };
            match event {
                Ok(event) => lost |= event == LinkEvent::Lost,
                Err(e) => self.lose_subscription(e),
            }
        }
        if lost {
            tracing::info!(
                "link notifications were lost (the socket's buffer was full); re-reading the uplink {}",
                self.uplink
            );
            Reason::NotificationsLost
        } else {
            Reason::Changed
        }
    }

    fn lose_subscription(&mut self, error: anyhow::Error) {
        tracing::warn!(
            "{error:#}; the uplink {} is re-read every {} s until a new subscription succeeds",
            self.uplink,
            RESYNC_EVERY.as_secs()
        );
        self.events = None;
    }

    /// Brings the datapath in line with the uplink as it is now. A failure (no such link, no
    /// IPv4 address) is logged and leaves the last settings in place.
    async fn sync(&mut self, host: &SharedHost, reason: Reason) {
        {
            let mut host = host.lock().await;
            // No datapath (none made yet, or `down` removed it): nothing to update; the first
            // network or container puts the settings in place.
            if host.existing_datapath().ok().flatten().is_some() {
                tracing::debug!(?reason, "syncing the uplink settings");
                if let Err(e) = host.sync_uplink().await {
                    tracing::warn!("updating the uplink settings: {e:#}");
                }
            }
        }
        self.index = uplink_index(host, &self.uplink).await;
    }
}

fn subscribe() -> Option<LinkEvents> {
    match LinkEvents::subscribe() {
        Ok(events) => Some(events),
        Err(e) => {
            tracing::warn!(
                "{e:#}; the uplink is re-read every {} s instead of when it changes",
                RESYNC_EVERY.as_secs()
            );
            None
        }
    }
}

/// The next notification; never, without a subscription.
async fn next_event(events: &mut Option<LinkEvents>) -> Result<LinkEvent> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// The uplink's current ifindex; `None` when it does not exist (or cannot be looked up: the
/// sync that ran just before logged why).
async fn uplink_index(host: &SharedHost, uplink: &str) -> Option<u32> {
    host.lock().await.netlink.link_by_name(uplink).await.ok().flatten().map(|link| link.index)
}

/// Whether a notification may change the uplink settings: it is about the uplink (by name, or
/// by the ifindex it had when last looked up), or notifications were lost.
fn concerns_uplink(event: &LinkEvent, uplink: &str, uplink_index: Option<u32>) -> bool {
    match event {
        LinkEvent::Link { index, name } => name.as_deref() == Some(uplink) || Some(*index) == uplink_index,
        // An address's label is its interface's name, or an alias of it (`eth0:1`).
        LinkEvent::Ipv4Address { index, label } => {
            Some(*index) == uplink_index
                || label
                    .as_deref()
                    .is_some_and(|l| l == uplink || l.strip_prefix(uplink).is_some_and(|alias| alias.starts_with(':')))
        }
        LinkEvent::Ipv6Address { index } => Some(*index) == uplink_index,
        LinkEvent::Lost => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_about_the_uplink_are_told_from_others() {
        let link = |index, name: Option<&str>| LinkEvent::Link { index, name: name.map(str::to_owned) };
        let addr = |index, label: Option<&str>| LinkEvent::Ipv4Address { index, label: label.map(str::to_owned) };
        // The uplink made again: a new index, its name.
        assert!(concerns_uplink(&link(9, Some("eth0")), "eth0", Some(3)));
        // Renamed away, or deleted: its old index.
        assert!(concerns_uplink(&link(3, Some("old0")), "eth0", Some(3)));
        assert!(concerns_uplink(&link(3, None), "eth0", Some(3)));
        // Containers' veths come and go all the time.
        assert!(!concerns_uplink(&link(12, Some("veth1234")), "eth0", Some(3)));
        assert!(!concerns_uplink(&link(12, Some("eth00")), "eth0", Some(3)));
        assert!(concerns_uplink(&addr(3, None), "eth0", Some(3)));
        assert!(concerns_uplink(&addr(9, Some("eth0")), "eth0", None));
        assert!(concerns_uplink(&addr(9, Some("eth0:1")), "eth0", None));
        assert!(!concerns_uplink(&addr(9, Some("eth01")), "eth0", Some(3)));
        assert!(!concerns_uplink(&addr(12, Some("lo")), "eth0", Some(3)));
        // The uplink's IPv6 address (say, DAD completed), and a container veth's link-local one.
        assert!(concerns_uplink(&LinkEvent::Ipv6Address { index: 3 }, "eth0", Some(3)));
        assert!(!concerns_uplink(&LinkEvent::Ipv6Address { index: 12 }, "eth0", Some(3)));
        // Whatever was lost may have been about the uplink.
        assert!(concerns_uplink(&LinkEvent::Lost, "eth0", Some(3)));
    }
}
