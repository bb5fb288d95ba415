//! Interface offload settings through the ethtool ioctl (what `ethtool -K` does), for the
//! one setting bpfnet needs: GRO on a container's end of its veth.
//!
//! Why: with `--uplink-mode xdp`, the uplink's XDP program delivers into a container by
//! redirecting the frame to the host-side veth, whose transmit hands it to the container's
//! end. veth accepts such frames only when that end runs NAPI, which it does when it has an
//! XDP program or GRO enabled (Linux 5.13+); bpfnet enables GRO rather than putting a
//! program inside the container.
use std::{io, os::fd::AsRawFd};

use anyhow::{Context, Result};

/// `ETHTOOL_GGRO`/`ETHTOOL_SGRO` from linux/ethtool.h.
#[cfg(test)]
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on or off on `ifname` (in the calling thread's network namespace).
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: on as u32 };
    ioctl(ifname, &mut value).with_context(|| format!("turning GRO {} on {ifname}", if on { "on" } else { "off" }))
}

/// Whether GRO is on on `ifname`.
#[cfg(test)]
pub fn gro(ifname: &str) -> Result<bool> {
    let mut value = EthtoolValue { cmd: ETHTOOL_GGRO, data: 0 };
    ioctl(ifname, &mut value).with_context(|| format!("reading the GRO setting of {ifname}"))?;
    Ok(value.data != 0)
}

fn ioctl(ifname: &str, value: &mut EthtoolValue) -> io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: an all-zero ifreq is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {ifname:?} is too long")));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = value as *mut EthtoolValue as *mut libc::c_char;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{devkit::netns::TestNamespaces, sys::netns};

    #[test]
    fn gro_on_and_off_on_a_veth() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = ns.names[0].clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime
            .block_on(netns::netlink_in(&name, |nl| async move {
                nl.create_veth("g0", [2, 0, 0, 0, 0, 1], "g1", [2, 0, 0, 0, 0, 2], None).await
            }))
            .unwrap();
        netns::run_in(&name, || {
            super::set_gro("g0", true)?;
            assert!(super::gro("g0")?);
            super::set_gro("g0", false)?;
            assert!(!super::gro("g0")?);
            let err = super::set_gro("nosuchif", true).unwrap_err();
            assert!(format!("{err:#}").contains("nosuchif"), "{err:#}");
            Ok(())
        })
        .unwrap();
    }
}
