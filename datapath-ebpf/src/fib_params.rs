//! `struct bpf_fib_lookup` as the programs pass it to the kernel: shared by the datapath's
//! `fib` and the bench's structural floor (`bench_floor`), which is an object of its own.

use aya_ebpf::{bindings::bpf_fib_lookup as bpf_fib_lookup_params, helpers::generated::bpf_fib_lookup, EbpfContext};

pub const AF_INET: u8 = 2;
// The bench floor (which includes this file) looks up IPv4 only.
#[allow(dead_code)]
pub const AF_INET6: u8 = 10;

/// An address as `bpf_fib_lookup` takes it: 16 bytes, IPv4's in the first 4.
#[allow(dead_code)]
pub trait FibAddress: Copy {
    const FAMILY: u8;
    fn words(self) -> [u32; 4];
}

impl FibAddress for u32 {
    const FAMILY: u8 = AF_INET;

    #[inline(always)]
    fn words(self) -> [u32; 4] {
        [self, 0, 0, 0]
    }
}

impl FibAddress for [u32; 4] {
    const FAMILY: u8 = AF_INET6;

    #[inline(always)]
    fn words(self) -> [u32; 4] {
        self
    }
}

/// `struct bpf_fib_lookup` (uapi/linux/bpf.h), with its unions laid out flat: IPv4's addresses
/// are the first word of IPv6's (`ipv6_*_rest` the other three).
#[repr(C)]
#[derive(Default)]
pub struct FibParams {
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// Input: packet length for the MTU check; 0 skips it (GSO packets exceed any MTU).
    pub tot_len: u16,
    pub ifindex: u32,
    pub tos: u32,
    pub ipv4_src: u32,
    pub ipv6_src_rest: [u32; 3],
    pub ipv4_dst: u32,
    pub ipv6_dst_rest: [u32; 3],
    pub vlan_or_tbid: u32,
    /// Input: the first 4 bytes are the mark; output: source and destination MACs.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl FibParams {
    /// Asks the kernel's routing table (`bpf_fib_lookup`, no flags): one of the
    /// `BPF_FIB_LKUP_RET_*` codes, with the answer written into `self`.
    #[inline(always)]
    pub fn lookup<C: EbpfContext>(&mut self, ctx: &C) -> u32 {
        // SAFETY: `self` is a valid, writable struct bpf_fib_lookup of the size passed.
        unsafe {
            bpf_fib_lookup(
                ctx.as_ptr(),
                self as *mut FibParams as *mut bpf_fib_lookup_params,
                core::mem::size_of::<FibParams>() as i32,
                0,
            ) as u32
        }
    }
}
