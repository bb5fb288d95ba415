//! The control plane's map update alone: bpfnet publishes a port with one `BPF_MAP_UPDATE_ELEM`
//! on its pinned SERVICES map, and its CLI logs no timing of it. The bench times that same
//! syscall itself: it takes the entry bpfnet wrote, deletes it (not timed) and writes it back
//! (timed), on the real map holding N other ports.
//!
//! A few bpf(2) commands over libc, as aya does; the key and value types are bpfnet's own
//! ([`datapath_common`]), and the map's key and value sizes are checked against them first.

use std::ffi::CString;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use datapath_common::{PublishedPortTarget, PublishedPortKey};

// From include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_NOEXIST: u64 = 1;

/// `union bpf_attr` for BPF_OBJ_GET (the kernel zero-fills what we leave out).
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for the BPF_MAP_*_ELEM commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info` (the kernel copies no more than `info_len`).
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is the repr(C) prefix of `union bpf_attr` this command reads; its size
    // is passed, and the kernel treats the rest of the union as zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T as *mut libc::c_void,
            mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The bytes of a plain `#[repr(C)]` map key or value.
fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a plain repr(C) struct of integers (datapath-common's map types, whose
    // padding is explicit fields), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), mem::size_of::<T>()) }
}

/// bpfnet's SERVICES map, opened from its pin.
pub struct Services {
    fd: OwnedFd,
}

impl Services {
    pub fn open(pin: &Path) -> Result<Services> {
        let path = CString::new(pin.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", pin.display()))?;
        let mut attr = ObjGetAttr {
            pathname: path.as_ptr() as u64,
            ..Default::default()
        };
        let raw = bpf(BPF_OBJ_GET, &mut attr)
            .with_context(|| format!("opening the pinned map {}", pin.display()))?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let map = Services { fd };
        map.check_layout().with_context(|| {
            format!("{} is not the SERVICES map this xtask knows", pin.display())
        })?;
        Ok(map)
    }

    fn check_layout(&self) -> Result<()> {
        let mut info = MapInfoHead::default();
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: mem::size_of::<MapInfoHead>() as u32,
            info: &mut info as *mut MapInfoHead as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let expected = (mem::size_of::<PublishedPortKey>(), mem::size_of::<PublishedPortTarget>());
        let found = (info.key_size as usize, info.value_size as usize);
        if found != expected {
            bail!(
                "key/value sizes {found:?}, expected {expected:?} (is --bpfnet from another version?)"
            );
        }
        Ok(())
    }

    fn elem(&self, key: &PublishedPortKey, value: *mut u8, flags: u64) -> MapElemAttr {
        MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: bytes_of(key).as_ptr() as u64,
            value: value as u64,
            flags,
            ..Default::default()
        }
    }

    pub fn get(&self, key: &PublishedPortKey) -> Result<Option<PublishedPortTarget>> {
        let mut backend = PublishedPortTarget::default();
        let mut attr = self.elem(key, (&mut backend as *mut PublishedPortTarget).cast(), 0);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(backend)),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err).context("BPF_MAP_LOOKUP_ELEM on SERVICES"),
        }
    }

    fn delete(&self, key: &PublishedPortKey) -> Result<()> {
        let mut attr = self.elem(key, std::ptr::null_mut(), 0);
        bpf(BPF_MAP_DELETE_ELEM, &mut attr).context("BPF_MAP_DELETE_ELEM on SERVICES")?;
        Ok(())
    }

    /// Insert a new entry (BPF_NOEXIST, as publishing a new port does), timed.
    fn insert_timed(&self, key: &PublishedPortKey, backend: &PublishedPortTarget) -> Result<Duration> {
        let mut value = *backend;
        let mut attr = self.elem(key, (&mut value as *mut PublishedPortTarget).cast(), BPF_NOEXIST);
        let started = Instant::now();
        let result = bpf(BPF_MAP_UPDATE_ELEM, &mut attr);
        let took = started.elapsed();
        result.context("BPF_MAP_UPDATE_ELEM on SERVICES")?;
        Ok(took)
    }

    /// Re-insert the entry bpfnet wrote for `key` `times` times (deleted in between, not
    /// timed); the times of the inserts. The entry is in place again afterwards.
    pub fn time_reinserts(&self, key: &PublishedPortKey, times: usize) -> Result<Vec<Duration>> {
        let Some(backend) = self.get(key)? else {
            bail!("SERVICES has no entry for the port bpfnet just published");
        };
        let mut took = Vec::with_capacity(times);
        for _ in 0..times {
            self.delete(key)?;
            took.push(self.insert_timed(key, &backend)?);
        }
        Ok(took)
    }
}

/// SERVICES' key for a port published on every host address (what `HOST_PORT:PORT` without
/// an address publishes): address 0, port in network byte order.
pub fn all_addresses_key(host_port: u16, protocol: u8) -> PublishedPortKey {
    PublishedPortKey {
        addr: 0,
        port: host_port.to_be(),
        proto: protocol,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_match_the_kernel_layout() {
        // The offsets of include/uapi/linux/bpf.h's union members.
        assert_eq!(mem::size_of::<MapElemAttr>(), 32);
        assert_eq!(mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(mem::size_of::<ObjGetAttr>(), 16);
        assert_eq!(mem::offset_of!(InfoAttr, info), 8);
        assert_eq!(mem::offset_of!(MapInfoHead, value_size), 12);
    }

    #[test]
    fn key_of_a_port_on_every_address() {
        let key = all_addresses_key(29_999, datapath_common::IPPROTO_TCP);
        assert_eq!(bytes_of(&key), [0, 0, 0, 0, 0x75, 0x2f, 6, 0]);
    }

    #[test]
    fn a_missing_pin_is_named() {
        let err = Services::open(Path::new("/nonexistent/maps/SERVICES"))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("/nonexistent/maps/SERVICES"),
            "{err:#}"
        );
    }
}
