//! bpfnet's datapath. Each entry program is a thin composition of the modules below; read
//! one entry top to bottom to follow one packet.
#![no_std]
#![no_main]

mod arp;
mod counters;
mod forward;
mod maps;
mod packet;

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use datapath_common::DropReason;
use network_types::eth::{EthHdr, EtherType};

/// TC ingress on a container's host-side veth: every packet the container sends.
///
/// ARP is answered from the maps; IPv4 to another container of the same network is delivered
/// straight into it; the gateway and everything else goes to the host stack; the rest is
/// dropped with a counted reason.
#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    match try_from_endpoint(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            counters::count_drop(&ctx, reason);
            TC_ACT_SHOT
        }
    }
}

fn try_from_endpoint(ctx: &TcContext) -> Result<i32, DropReason> {
    let source = forward::source_endpoint(ctx)?;
    let eth: *mut EthHdr = packet::ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Arp as u16 {
        arp::answer(ctx, eth, &source)
    } else if ether_type == EtherType::Ipv4 as u16 {
        forward::ipv4_from_endpoint(ctx, eth, &source)
    } else {
        Err(DropReason::UnsupportedL3)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}
