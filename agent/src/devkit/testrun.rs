//! `BPF_PROG_TEST_RUN`: runs a loaded skb (tc) or XDP program on a crafted packet, with no
//! interface and no traffic. The datapath unit tests check verdicts and rewritten bytes with
//! it; the benchmark reads the kernel's own ns/packet from it. aya 0.14 has no wrapper, so
//! this is a thin one over bpf(2).
//!
//! What the kernel (6.x, net/bpf/test_run.c) does with a tc program's test run, which the
//! callers must keep in mind:
//! - The packet must be at least an Ethernet header (14 bytes) and at most a page minus
//!   headroom, or the syscall fails with EINVAL: a shorter frame cannot be tested.
//! - `skb->dev` is the interface `ctx.ifindex` names *in the calling thread's network
//!   namespace* (ENODEV if there is none; loopback when 0 or 1), so `__sk_buff.ifindex` is
//!   only a real interface's index when the caller runs inside the right namespace.
//! - A redirect is not carried out: the program's verdict (`TC_ACT_REDIRECT`) comes back
//!   as `retval`, and the redirect target is not reported anywhere.
//! - With `repeat > 1` the same buffer is fed back each time, so a program that rewrites the
//!   packet sees its own output from the second run on.
#![allow(dead_code)] // context fields the kernel accepts but no caller sets yet

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use crate::sys::bpf;

/// `enum bpf_cmd` value of `BPF_PROG_TEST_RUN` (uapi linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Room for what a program may add to the packet (encapsulation, `bpf_skb_change_tail`):
/// the output buffer is the input's size plus this. A bigger output fails with ENOSPC.
pub(crate) const OUTPUT_HEADROOM: usize = 4096;

/// The `test` member of `union bpf_attr` (uapi linux/bpf.h), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct __sk_buff` (uapi linux/bpf.h, as in the 6.18 kernel's BTF), the context of a tc
/// program's test run. Only the fields the kernel lets a test run set are public (see
/// `convert___skb_to_skb`); any other non-zero field makes the syscall fail with EINVAL, so
/// they stay private and zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SkbContext {
    len: u32,
    pkt_type: u32,
    pub mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    pub priority: u32,
    /// `skb->skb_iif`: the interface the packet was received on.
    pub ingress_ifindex: u32,
    /// `skb->dev`: looked up in the caller's network namespace; 0 means loopback.
    pub ifindex: u32,
    tc_index: u32,
    pub cb: [u32; 5],
    hash: u32,
    tc_classid: u32,
    data: u32,
    data_end: u32,
    napi_id: u32,
    family: u32,
    remote_ip4: u32,
    local_ip4: u32,
    remote_ip6: [u32; 4],
    local_ip6: [u32; 4],
    remote_port: u32,
    local_port: u32,
    data_meta: u32,
    flow_keys: u64,
    pub tstamp: u64,
    /// Length on the wire; 0 means the packet's length.
    pub wire_len: u32,
    pub gso_segs: u32,
    sk: u64,
    pub gso_size: u32,
    tstamp_type: u8,
    _pad: [u8; 3],
    pub hwtstamp: u64,
}

// The uapi layout, checked where a mistake would silently shift every field after it.
const _: () = {
    assert!(size_of::<SkbContext>() == 192);
    assert!(offset_of!(SkbContext, ifindex) == 40);
    assert!(offset_of!(SkbContext, cb) == 48);
    assert!(offset_of!(SkbContext, flow_keys) == 144);
    assert!(offset_of!(SkbContext, tstamp) == 152);
    assert!(offset_of!(SkbContext, gso_size) == 176);
    assert!(offset_of!(SkbContext, hwtstamp) == 184);
    assert!(size_of::<XdpContext>() == 24);
    assert!(size_of::<TestRunAttr>() == 80);
};

impl SkbContext {
    /// The context of a packet received on `ifindex`, as tc ingress sees it: both
    /// `__sk_buff.ifindex` and `ingress_ifindex` are that interface.
    pub(crate) fn received_on(ifindex: u32) -> Self {
        Self { ingress_ifindex: ifindex, ifindex, ..Self::default() }
    }
}

/// `struct xdp_md` (uapi linux/bpf.h), the context of an XDP program's test run. The kernel
/// requires `data_end` to be the packet's length and `data_meta`/`egress_ifindex` to be
/// zero; `run_xdp` fills those in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct XdpContext {
    data: u32,
    data_end: u32,
    data_meta: u32,
    /// Looked up in the caller's network namespace (ENODEV if absent); 0 means none.
    pub ingress_ifindex: u32,
    /// Must be below the interface's number of RX queues.
    pub rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpContext {
    pub(crate) fn received_on(ifindex: u32) -> Self {
        Self { ingress_ifindex: ifindex, ..Self::default() }
    }
}

/// What one test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (a `TC_ACT_*` or `XDP_*` verdict).
    pub retval: u32,
    /// The packet as the program left it (after the last repetition).
    pub packet_out: Vec<u8>,
    /// Mean run time per repetition, in nanoseconds, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs a `BPF_PROG_TYPE_SCHED_CLS`/`SCHED_ACT` (or other skb) program `repeat` times on
/// `packet` (0 counts as 1). See the module documentation for the kernel's rules.
pub(crate) fn run_skb(
    prog: BorrowedFd<'_>,
    packet: &[u8],
    ctx: Option<&SkbContext>,
    repeat: u32,
) -> io::Result<TestRunOutput> {
    test_run(prog, packet, ctx.map(as_bytes), repeat)
}

/// Runs an XDP program `repeat` times on `packet` (0 counts as 1).
pub(crate) fn run_xdp(
    prog: BorrowedFd<'_>,
    packet: &[u8],
    ctx: Option<&XdpContext>,
    repeat: u32,
) -> io::Result<TestRunOutput> {
    let ctx = ctx.map(|ctx| XdpContext {
        data: 0,
        data_end: u32::try_from(packet.len()).unwrap_or(u32::MAX),
        data_meta: 0,
        egress_ifindex: 0,
        ..*ctx
    });
    test_run(prog, packet, ctx.as_ref().map(as_bytes), repeat)
}

fn test_run(prog: BorrowedFd<'_>, packet: &[u8], ctx: Option<&[u8]>, repeat: u32) -> io::Result<TestRunOutput> {
    let too_big = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} is larger than 4 GiB"));
    let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len().try_into().map_err(|_| too_big("the packet"))?,
        data_size_out: out.len().try_into().map_err(|_| too_big("the packet"))?,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len().try_into().map_err(|_| too_big("the context"))?;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // Every pointer in `attr` refers to a live buffer of the size given next to it, and the
    // kernel writes at most `data_size_out` bytes into `out`.
    if let Err(err) = bpf::bpf(BPF_PROG_TEST_RUN, &mut attr) {
        return Err(io::Error::new(
            err.kind(),
            format!(
                "BPF_PROG_TEST_RUN of a {}-byte packet failed: {err} \
                 (EINVAL: packet shorter than 14 bytes or a context field the kernel does not \
                 accept; ENODEV: the context's ifindex is not an interface of this thread's \
                 network namespace; ENOSPC: the program grew the packet by more than {} bytes)",
                packet.len(),
                OUTPUT_HEADROOM
            ),
        ));
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput { retval: attr.retval, packet_out: out, duration_ns: attr.duration })
}

pub(crate) const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub(crate) const BPF_PROG_TYPE_XDP: u32 = 6;

/// `enum bpf_cmd` value of `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;

/// The `prog_load` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `r0 = imm; exit`: the smallest program there is. Test-run, it shows what the kernel's
/// own timing adds to every measured run.
pub(crate) fn return_imm(imm: i32) -> Vec<u64> {
    vec![insn(0xb7, 0, 0, 0, imm), insn(0x95, 0, 0, 0, 0)]
}

/// One eBPF instruction, encoded.
pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// Loads raw instructions as a program of `prog_type` (GPL), unpinned: it lives as long as
/// the returned fd.
pub(crate) fn load_program(prog_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns
            .len()
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many instructions"))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // The pointers in `attr` outlive the call.
    let mut attr = attr;
    let fd = bpf::bpf(BPF_PROG_LOAD, &mut attr)
        .map_err(|err| io::Error::new(err.kind(), format!("BPF_PROG_LOAD: {err}")))?;
    // SAFETY: a new fd the kernel just handed us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: only used on the `#[repr(C)]` contexts above, which have explicit padding
    // fields, so every byte is initialized.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};

    use super::*;

    /// `r0 = *(u32 *)(r1 + off); exit`: returns a 32-bit context field.
    fn return_ctx_field(off: i16) -> Vec<u64> {
        vec![insn(0x61, 0, 1, off, 0), insn(0x95, 0, 0, 0, 0)]
    }

    fn load(prog_type: u32, insns: &[u64]) -> OwnedFd {
        load_program(prog_type, insns).unwrap()
    }

    fn frame() -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        frame.extend(0..50u8);
        frame
    }

    #[test]
    fn skb_verdict_packet_and_duration() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, &return_imm(7));
        let out = run_skb(prog.as_fd(), &frame(), None, 1).unwrap();
        assert_eq!(out.retval, 7);
        assert_eq!(out.packet_out, frame());
        let out = run_skb(prog.as_fd(), &frame(), None, 1000).unwrap();
        assert_eq!(out.retval, 7);
        assert!(out.duration_ns < 1_000_000, "{} ns per run of a 2-instruction program", out.duration_ns);
    }

    #[test]
    fn skb_context_reaches_the_program() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let ifindex = offset_of!(SkbContext, ifindex) as i16;
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, &return_ctx_field(ifindex));
        // No context: the kernel runs the packet as if received on loopback (ifindex 1).
        assert_eq!(run_skb(prog.as_fd(), &frame(), None, 1).unwrap().retval, 1);
        let ctx = SkbContext::received_on(1);
        assert_eq!(run_skb(prog.as_fd(), &frame(), Some(&ctx), 1).unwrap().retval, 1);
        let mark = offset_of!(SkbContext, mark) as i16;
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, &return_ctx_field(mark));
        let ctx = SkbContext { mark: 0xbeef, ..SkbContext::default() };
        assert_eq!(run_skb(prog.as_fd(), &frame(), Some(&ctx), 1).unwrap().retval, 0xbeef);
    }

    #[test]
    fn skb_errors_name_the_cause() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, &return_imm(0));
        // An interface index that does not exist in this namespace.
        let ctx = SkbContext::received_on(0x7fff_fff0);
        let err = run_skb(prog.as_fd(), &frame(), Some(&ctx), 1).unwrap_err();
        assert_eq!(err.raw_os_error(), None, "wrapped with an explanation");
        assert!(err.to_string().contains("No such device"), "{err}");
        // Shorter than an Ethernet header: refused by the kernel before the program runs.
        let err = run_skb(prog.as_fd(), &frame()[..10], None, 1).unwrap_err();
        assert!(err.to_string().contains("Invalid argument"), "{err}");
    }

    #[test]
    fn xdp_verdict_and_context() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        const XDP_PASS: i32 = 2;
        let prog = load(BPF_PROG_TYPE_XDP, &return_imm(XDP_PASS));
        let out = run_xdp(prog.as_fd(), &frame(), None, 1).unwrap();
        assert_eq!((out.retval, out.packet_out), (XDP_PASS as u32, frame()));
        let ingress = offset_of!(XdpContext, ingress_ifindex) as i16;
        let prog = load(BPF_PROG_TYPE_XDP, &return_ctx_field(ingress));
        let out = run_xdp(prog.as_fd(), &frame(), Some(&XdpContext::received_on(1)), 1).unwrap();
        assert_eq!(out.retval, 1);
    }
}
