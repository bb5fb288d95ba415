//! The benchmark's structural floor (`cargo xtask bench`, datapath `bpfnet-topology-floor`):
//! NOT bpfnet's datapath, and never loaded by the agent. A program on bpfnet's attach points
//! (a container's host-side veth, the uplink) that only redirects, so that the bench can
//! tell what bpfnet's topology costs (veth pairs, redirects) from what its programs cost.
//!
//! - to an address in `FLOOR_DESTS` (a container): its MACs written as bpfnet writes them,
//!   then `bpf_redirect_peer` into the container, as bpfnet delivers;
//! - anything else: `bpf_fib_lookup` and `bpf_redirect` out of the interface it names (or
//!   `bpf_redirect_neigh` when the neighbour is not resolved yet), as bpfnet sends out of
//!   the uplink; what the routing table keeps (the host's own addresses) goes to the stack.
//!
//! No translation, no conntrack, no counters: the bench routes the SNAT and DNAT scenarios
//! without NAT on this floor (the outside has a route to the containers).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
    EbpfContext,
};
use datapath_common::{bench_floor::FloorDest, Ipv4Be};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

#[path = "../fib_params.rs"]
mod fib_params;

use fib_params::{FibParams, AF_INET};

/// Container address -> where to deliver it. Filled by `bpfnet-devkit floor-attach`.
#[map]
static FLOOR_DESTS: HashMap<Ipv4Be, FloorDest> = HashMap::with_max_entries(64, 0);

#[classifier]
pub fn bench_floor(ctx: TcContext) -> i32 {
    // What it cannot handle goes to the stack unchanged: this program never drops.
    try_bench_floor(&ctx).unwrap_or(TC_ACT_OK)
}

#[inline(always)]
fn try_bench_floor(ctx: &TcContext) -> Result<i32, ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return Err(());
    }
    let eth = start as *mut EthHdr;
    let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
    // SAFETY: both headers lie inside the packet (checked above).
    let (ether_type, saddr, daddr) = unsafe { ((*eth).ether_type, (*ip).src_addr, (*ip).dst_addr) };
    // Addresses as they sit in the packet (network order), as the map's keys are written.
    let (saddr, daddr): (Ipv4Be, Ipv4Be) = (u32::from_ne_bytes(saddr), u32::from_ne_bytes(daddr));
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(());
    }
    // SAFETY: map values are plain data, copied out at once.
    if let Some(dest) = unsafe { FLOOR_DESTS.get(&daddr) }.copied() {
        // SAFETY: the Ethernet header lies inside the packet (checked above).
        unsafe {
            (*eth).dst_addr = dest.mac;
            (*eth).src_addr = dest.gateway_mac;
        }
        // SAFETY: helper call with plain integer arguments.
        return Ok(unsafe { bpf_redirect_peer(dest.host_ifindex, 0) } as i32);
    }
    let mut params = FibParams {
        family: AF_INET,
        // SAFETY: `skb` is the context pointer the kernel passed to the program.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ipv4_src: saddr,
        ipv4_dst: daddr,
        ..Default::default()
    };
    let rc = params.lookup(ctx);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: as above; the lookup wrote both MACs.
            unsafe {
                (*eth).dst_addr = params.dmac;
                (*eth).src_addr = params.smac;
            }
            // SAFETY: helper call with plain integer arguments.
            Ok(unsafe { bpf_redirect(params.ifindex, 0) } as i32)
        }
        // SAFETY: helper call with plain arguments; a null neighbour makes the kernel resolve it.
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            Ok(unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
        }
        _ => Err(()),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
