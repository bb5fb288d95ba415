//! The bpf(2) commands bpfnet needs and aya 0.14 has no API for: updating the program behind
//! a pinned cgroup link, asking the kernel which programs a cgroup runs (BPF_PROG_QUERY),
//! which interface a tcx or XDP link is on (aya's `LinkInfo` hides it), and which program a
//! program array's slot holds (aya's `ProgramArray` only sets and clears). Thin wrappers over one
//! syscall function, [`bpf`], which the developer kit's BPF_PROG_TEST_RUN and BPF_PROG_LOAD
//! use too.
use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `enum bpf_cmd` values (uapi linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Programs a cgroup may run per hook that one query reports; more is an error (E2BIG).
const QUERY_CAPACITY: usize = 64;

/// bpf(2) with `attr`, the command's member of `union bpf_attr` (a `#[repr(C)]` prefix of it:
/// the kernel zero-fills the rest). The one wrapper of the syscall in bpfnet; aya does the rest.
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the `union bpf_attr` member of `cmd`, zero-padded, and lives for the
    // call; the kernel reads (and for queries writes) at most size_of::<T>() bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// The `BPF_OBJ_GET` member of `union bpf_attr`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned object (here: a link) by its bpffs path.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The id of the program in `slot` of a program array (the kernel answers a lookup in one from
/// user space with the program's id); `None` for an empty slot.
pub fn program_array_slot(array: BorrowedFd<'_>, slot: u32) -> io::Result<Option<u32>> {
    let mut id = 0u32;
    let mut attr = MapElemAttr {
        map_fd: array.as_raw_fd() as u32,
        _pad: 0,
        key: &slot as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Points a link at another program, atomically (BPF_LINK_UPDATE).
pub fn update_link(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct ObjInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the interface of a tcx or XDP link: both union members start
/// with `__u32 ifindex`, at offset 16 (the union is 8-byte aligned). The kernel fills only as
/// much as `info_len` says.
#[repr(C)]
#[derive(Default)]
struct NetLinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    attach_type: u32,
}

/// What a tcx or XDP link runs, and where.
pub struct NetLink {
    pub program_id: u32,
    /// The interface it is attached to: 0 once the kernel detached it because the interface
    /// went away (the link itself lives on while it is pinned).
    pub ifindex: u32,
}

/// The program and interface of a tcx or XDP link (aya's LinkInfo hides the interface).
pub fn net_link(link: BorrowedFd<'_>) -> io::Result<NetLink> {
    let mut info = NetLinkInfoHead::default();
    let mut attr = ObjInfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<NetLinkInfoHead>() as u32,
        info: &raw mut info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(NetLink { program_id: info.prog_id, ifindex: info.ifindex })
}

/// The `query` member of `union bpf_attr`, up to `prog_cnt`.
#[repr(C)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Ids of the programs attached to `cgroup` itself (not inherited) at `attach_type`.
pub fn cgroup_program_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; QUERY_CAPACITY];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: QUERY_CAPACITY as u32,
        _pad: 0,
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..(attr.prog_cnt as usize).min(QUERY_CAPACITY)].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_match_the_uapi_layout() {
        assert_eq!(size_of::<ObjGetAttr>(), 16);
        assert_eq!(size_of::<LinkUpdateAttr>(), 16);
        assert_eq!(size_of::<ObjInfoAttr>(), 16);
        assert_eq!(std::mem::offset_of!(NetLinkInfoHead, ifindex), 16);
        assert_eq!(std::mem::offset_of!(ProgQueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(ProgQueryAttr, prog_cnt), 24);
    }
}
