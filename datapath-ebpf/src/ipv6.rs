//! The parsed view of an IPv6 header that the IPv6 programs share, as `packet::Ipv4` is
//! IPv4's: the addresses, the hop limit, and the L4 protocol and offset found by walking the
//! extension headers (RFC 8200 section 4) up to a fixed bound. Also the address classes the
//! datapath tells apart (link-local, multicast, unspecified) and a container's link-local
//! address.
use datapath_common::{ipv6_be, DropReason, Ipv6Be};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::packet::{ptr_at, Packet};

/// Offset of the IPv6 header in the frame.
pub const IP6_OFF: usize = EthHdr::LEN;
/// Extension headers walked before the L4 header; a packet with more is dropped
/// (`Ipv6ExtensionHeaders`). Real traffic carries one or two (hop-by-hop for MLD's router
/// alert, a fragment header); the bound keeps the verifier's unrolled walk short.
pub const MAX_EXTENSION_HEADERS: usize = 4;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DESTINATION_OPTIONS: u8 = 60;

/// The first two bytes of every extension header but the fragment header: the next header,
/// and the header's length in 8-byte units, not counting the first 8 bytes.
#[repr(C)]
struct ExtensionHeader {
    next_header: u8,
    len: u8,
}

/// The fragment header (RFC 8200 section 4.5): always 8 bytes.
#[repr(C)]
struct FragmentHeader {
    next_header: u8,
    _reserved: u8,
    /// The fragment offset (13 bits, in 8-byte units) and the M (more fragments) flag.
    offset_flags: [u8; 2],
    identification: [u8; 4],
}

impl FragmentHeader {
    const LEN: usize = core::mem::size_of::<Self>();
}

/// What the datapath needs of an IPv6 header and its extension headers, read once per packet.
#[derive(Clone, Copy)]
pub struct Ipv6 {
    pub saddr: Ipv6Be,
    pub daddr: Ipv6Be,
    /// The L4 protocol: the next header after the last extension header.
    pub next_header: u8,
    pub hop_limit: u8,
    /// Offset of the L4 header (extension headers skipped).
    pub l4_off: usize,
    /// The fragment header's identification (network byte order), 0 without one.
    pub fragment_id: u32,
    /// The first fragment of a fragmented datagram (more fragments follow, offset 0).
    pub first_fragment: bool,
    /// A fragment other than the first: no L4 header in it.
    pub later_fragment: bool,
}

/// Parses the IPv6 header after the Ethernet header and walks its extension headers.
#[inline(always)]
pub fn ipv6<P: Packet>(ctx: &P) -> Result<Ipv6, DropReason> {
    let hdr: *const Ipv6Hdr = ptr_at(ctx, IP6_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let hdr = unsafe { &*hdr };
    if hdr.version() != 6 {
        return Err(DropReason::Malformed);
    }
    let mut ip = Ipv6 {
        saddr: address(&hdr.src_addr),
        daddr: address(&hdr.dst_addr),
        next_header: hdr.next_hdr,
        hop_limit: hdr.hop_limit,
        l4_off: IP6_OFF + Ipv6Hdr::LEN,
        fragment_id: 0,
        first_fragment: false,
        later_fragment: false,
    };
    let mut fragmented = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match ip.next_header {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DESTINATION_OPTIONS => {
                let ext: *const ExtensionHeader = ptr_at(ctx, ip.l4_off)?;
                // SAFETY: bounds-checked by `ptr_at`.
                let ext = unsafe { &*ext };
                ip.next_header = ext.next_header;
                ip.l4_off += (ext.len as usize + 1) * 8;
            }
            NEXT_FRAGMENT => {
                // A fragment of a fragment does not exist (RFC 8200 section 4.5).
                if fragmented {
                    return Err(DropReason::Ipv6ExtensionHeaders);
                }
                fragmented = true;
                let frag: *const FragmentHeader = ptr_at(ctx, ip.l4_off)?;
                // SAFETY: bounds-checked by `ptr_at`.
                let frag = unsafe { &*frag };
                const MORE_FRAGMENTS: u16 = 0x0001;
                const OFFSET: u16 = 0xfff8;
                let offset_flags = u16::from_be_bytes(frag.offset_flags);
                ip.next_header = frag.next_header;
                ip.fragment_id = u32::from_ne_bytes(frag.identification);
                ip.first_fragment = offset_flags & (OFFSET | MORE_FRAGMENTS) == MORE_FRAGMENTS;
                ip.later_fragment = offset_flags & OFFSET != 0;
                ip.l4_off += FragmentHeader::LEN;
            }
            _ => return Ok(ip),
        }
    }
    match ip.next_header {
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_DESTINATION_OPTIONS => {
            Err(DropReason::Ipv6ExtensionHeaders)
        }
        _ => Ok(ip),
    }
}

/// An address of the packet as the maps store it, read a word at a time.
#[inline(always)]
pub fn address(octets: &[u8; 16]) -> Ipv6Be {
    // SAFETY: 16 readable bytes; packet fields need not be aligned.
    unsafe { (octets.as_ptr() as *const Ipv6Be).read_unaligned() }
}

/// Writes an address into the packet a word at a time.
#[inline(always)]
pub fn set_address(octets: &mut [u8; 16], addr: &Ipv6Be) {
    // SAFETY: 16 writable bytes; packet fields need not be aligned.
    unsafe { (octets.as_mut_ptr() as *mut Ipv6Be).write_unaligned(*addr) }
}

/// The first octets of an address.
#[inline(always)]
fn first_octets(addr: &Ipv6Be) -> [u8; 4] {
    addr[0].to_ne_bytes()
}

/// fe80::/10: link-local unicast.
#[inline(always)]
pub fn is_link_local(addr: &Ipv6Be) -> bool {
    let [a, b, ..] = first_octets(addr);
    a == 0xfe && b & 0xc0 == 0x80
}

/// ff00::/8.
#[inline(always)]
pub fn is_multicast(addr: &Ipv6Be) -> bool {
    first_octets(addr)[0] == 0xff
}

/// `::`, the source of duplicate address detection's probes.
#[inline(always)]
pub fn is_unspecified(addr: &Ipv6Be) -> bool {
    addr[0] | addr[1] | addr[2] | addr[3] == 0
}

/// The link-local address the kernel gives an interface with this MAC (fe80::/64 with the
/// modified EUI-64 interface identifier, RFC 4291 appendix A; Linux's default
/// `addr_gen_mode`).
#[inline(always)]
pub fn link_local_of(mac: &[u8; 6]) -> Ipv6Be {
    ipv6_be([0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]])
}
