//! Attachment: the programs on interfaces (tcx, XDP) and on the host cgroup, each through a
//! pinned BPF link, and what the kernel says is attached.
use super::*;

/// The socket hooks of host processes (`--host-cgroup`), each with its cgroup attach point.
/// AF_INET6 sockets' datagrams to IPv4-mapped addresses go through sendmsg4; sendmsg6 sees
/// only their datagrams to IPv6 addresses (see the datapath's `sock_sendmsg6`).
pub const HOST_SOCKET_PROGRAMS: [(&str, CgroupSockAddrAttachType); 8] = [
    (program_names::SOCK_CONNECT4, CgroupSockAddrAttachType::Connect4),
    (program_names::SOCK_SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (program_names::SOCK_RECVMSG4, CgroupSockAddrAttachType::UDPRecvMsg4),
    (program_names::SOCK_GETPEER4, CgroupSockAddrAttachType::GetPeerName4),
    (program_names::SOCK_CONNECT6, CgroupSockAddrAttachType::Connect6),
    (program_names::SOCK_SENDMSG6, CgroupSockAddrAttachType::UDPSendMsg6),
    (program_names::SOCK_RECVMSG6, CgroupSockAddrAttachType::UDPRecvMsg6),
    (program_names::SOCK_GETPEER6, CgroupSockAddrAttachType::GetPeerName6),
];

/// The hook's name, as `status` shows it.
pub fn hook_name(attach_type: CgroupSockAddrAttachType) -> &'static str {
    match attach_type {
        CgroupSockAddrAttachType::Connect4 => "connect4",
        CgroupSockAddrAttachType::UDPSendMsg4 => "sendmsg4",
        CgroupSockAddrAttachType::UDPRecvMsg4 => "recvmsg4",
        CgroupSockAddrAttachType::GetPeerName4 => "getpeername4",
        CgroupSockAddrAttachType::Connect6 => "connect6",
        CgroupSockAddrAttachType::UDPSendMsg6 => "sendmsg6",
        CgroupSockAddrAttachType::UDPRecvMsg6 => "recvmsg6",
        CgroupSockAddrAttachType::GetPeerName6 => "getpeername6",
        _ => "other",
    }
}

/// Prefix of the host cgroup's link pins (bpffs allows no `.`; host veths are `bn...`).
pub(super) const HOST_CGROUP_PIN_PREFIX: &str = "hostcg-";

/// What a pin under `links/` is, by its name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LinkPin<'a> {
    /// A container's host-side veth (its interface name).
    Endpoint(&'a str),
    Uplink(UplinkMode, &'a str),
    /// A socket hook on the host cgroup with this cgroup id.
    HostCgroup {
        cgroup_id: u64,
        program: &'a str,
    },
}

impl<'a> LinkPin<'a> {
    pub(super) fn parse(name: &'a str) -> Self {
        if let Some((mode, ifname)) = UplinkMode::of_pin(name) {
            return LinkPin::Uplink(mode, ifname);
        }
        let host_cgroup = name.strip_prefix(HOST_CGROUP_PIN_PREFIX).and_then(|rest| rest.split_once('-'));
        if let Some((id, program)) = host_cgroup {
            if let Ok(cgroup_id) = id.parse() {
                return LinkPin::HostCgroup { cgroup_id, program };
            }
        }
        LinkPin::Endpoint(name)
    }

    pub(super) fn host_cgroup_name(cgroup_id: u64, program: &str) -> String {
        format!("{HOST_CGROUP_PIN_PREFIX}{cgroup_id}-{program}")
    }

    /// The program the link runs.
    pub(super) fn program(&self) -> &str {
        match self {
            LinkPin::Endpoint(_) => program_names::FROM_ENDPOINT,
            LinkPin::Uplink(mode, _) => mode.program(),
            LinkPin::HostCgroup { program, .. } => program,
        }
    }
}

/// One socket hook's pinned link on a host cgroup.
#[derive(Debug)]
pub struct HostCgroupLink {
    pub cgroup_id: u64,
    pub program: String,
}

/// The tcx or XDP link pinned at `pin`, as the kernel reports it.
pub(super) fn pinned_net_link(pin: &Path) -> Result<bpf::NetLink> {
    let link = bpf::open_pinned(pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
    bpf::net_link(link.as_fd()).with_context(|| format!("reading the link pinned at {}", pin.display()))
}

/// The program the tcx or XDP link pinned at `pin` runs on the interface named `ifname`; none
/// if it runs on no interface by that name. A pin keeps its link when the interface goes
/// away: the kernel detaches the link (its ifindex then reads 0), and an interface made again
/// under the same name has a new ifindex and no program.
pub(super) fn pinned_link_program_on(pin: &Path, ifname: &str) -> Result<Option<u32>> {
    let link = pinned_net_link(pin)?;
    let current = nix::net::if_::if_nametoindex(ifname).ok();
    Ok((link.ifindex != 0 && Some(link.ifindex) == current).then_some(link.program_id))
}

/// Whether the link pinned at `pin` still runs on the interface named `ifname`. A stale pin
/// (see [`pinned_link_program_on`]) is removed here, so that the caller attaches anew.
pub(super) fn pin_still_attached(pin: &Path, ifname: &str) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    if pinned_link_program_on(pin, ifname)?.is_some() {
        return Ok(true);
    }
    tracing::info!(
        "the link pinned at {} is not on {ifname}: the interface went away or was made again; attaching anew",
        pin.display()
    );
    remove_pin(pin)?;
    Ok(false)
}

/// Attaches a tcx program to the ingress of `ifname` and pins the link at `pin`. Idempotent:
/// a pinned link that still runs on the interface is kept.
pub(super) fn attach_pinned(program: &mut SchedClassifier, name: &str, ifname: &str, pin: &Path) -> Result<()> {
    if pin_still_attached(pin, ifname)? {
        return Ok(());
    }
    let link_id = program
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching {name} to tcx ingress of {ifname}"))?;
    let link: FdLink = program.take_link(link_id)?.try_into().context("a tcx attachment should be an fd link")?;
    link.pin(pin).with_context(|| format!("pinning the tcx link of {ifname} at {}", pin.display()))?;
    Ok(())
}

/// Attaches the XDP uplink program to `ifname` (the driver's native XDP where it has one, as
/// veth does) and pins the link. Idempotent, as `attach_pinned`.
pub(super) fn attach_xdp_pinned(program: &mut Xdp, ifname: &str, pin: &Path) -> Result<()> {
    if pin_still_attached(pin, ifname)? {
        return Ok(());
    }
    let link_id = program
        .attach(ifname, XdpMode::Default)
        .with_context(|| format!("attaching {} to XDP of {ifname}", program_names::FROM_UPLINK_XDP))?;
    let link: FdLink = program
        .take_link(link_id)?
        .try_into()
        .context("the kernel attached XDP without a BPF link (netlink fallback), which cannot be pinned")?;
    link.pin(pin).with_context(|| format!("pinning the XDP link of {ifname} at {}", pin.display()))?;
    Ok(())
}

/// Points the link pinned at `link_pin` at `program` (BPF link update).
pub(super) fn replace_behind_link(program: &mut Program, link_pin: &Path) -> Result<()> {
    // A tcx or XDP link whose interface went away (the kernel detached it; only its pin keeps
    // it) has nothing to run a program for, and the kernel refuses to update it (ENOLINK):
    // its pin goes, and the interface's next attach (the uplink follower, reconciliation)
    // makes a new link if the interface comes back.
    if matches!(program, Program::SchedClassifier(_) | Program::Xdp(_)) && pinned_net_link(link_pin)?.ifindex == 0 {
        tracing::info!("the interface of the link pinned at {} is gone: its pin is removed", link_pin.display());
        return remove_pin(link_pin);
    }
    let pinned = || -> Result<FdLink> {
        let link = PinnedLink::from_pin(link_pin)
            .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
        Ok(FdLink::from(link))
    };
    match program {
        Program::SchedClassifier(p) => {
            let id = p.attach_to_link(SchedClassifierLink::try_from(pinned()?)?)?;
            drop(p.take_link(id)?);
        }
        Program::Xdp(p) => {
            let id = p.attach_to_link(XdpLink::try_from(pinned()?)?)?;
            drop(p.take_link(id)?);
        }
        // aya 0.14 has no link update for cgroup links.
        Program::CgroupSockAddr(p) => {
            let link = bpf::open_pinned(link_pin)
                .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
            bpf::update_link(link.as_fd(), p.fd()?.as_fd()).context("BPF_LINK_UPDATE")?;
        }
        other => bail!("no link update for a {:?} program", other.prog_type()),
    }
    Ok(())
}

/// Pins of the links a program is attached through: the uplink's (of its mode) for the
/// uplink programs, the containers' for from_endpoint, the host cgroup's for a socket hook.
pub(super) fn link_pins_of(pin_dir: &Path, program: &str) -> Result<Vec<PathBuf>> {
    let dir = pin_dir.join("links");
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if LinkPin::parse(&entry.file_name().to_string_lossy()).program() == program {
            pins.push(entry.path());
        }
    }
    Ok(pins)
}

impl Datapath {
    pub(super) fn link_pin(&self, ifname: &str) -> PathBuf {
        self.pin_dir.join("links").join(ifname)
    }

    /// Attaches `from_endpoint` to the tcx ingress of a host-side veth and pins the link.
    /// Idempotent: an existing pinned link for the interface is kept.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<()> {
        let pin = self.link_pin(ifname);
        attach_pinned(&mut self.from_endpoint, program_names::FROM_ENDPOINT, ifname, &pin)
    }

    /// Removes the pinned link of an interface, which detaches the program. Idempotent.
    pub fn detach_endpoint(&self, ifname: &str) -> Result<()> {
        remove_pin(&self.link_pin(ifname))
    }

    pub(super) fn uplink_pin(&self, ifname: &str, mode: UplinkMode) -> PathBuf {
        self.pin_dir.join("links").join(format!("{}{ifname}", mode.pin_prefix()))
    }

    /// Attaches the uplink program of `mode` to the uplink (idempotent), then detaches
    /// whatever was attached before in another mode or to an interface that was the uplink
    /// before: in that order, so that a mode change leaves no moment without a program.
    pub fn attach_uplink(&mut self, ifname: &str, mode: UplinkMode) -> Result<()> {
        let pin = self.uplink_pin(ifname, mode);
        match mode {
            UplinkMode::Tc => attach_pinned(&mut self.from_uplink, program_names::FROM_UPLINK, ifname, &pin)?,
            UplinkMode::Xdp => attach_xdp_pinned(&mut self.from_uplink_xdp, ifname, &pin)?,
        }
        for (old, old_mode) in self.uplinks()? {
            if old != ifname || old_mode != mode {
                remove_pin(&self.uplink_pin(&old, old_mode))?;
            }
        }
        Ok(())
    }

    /// Interfaces that carry an uplink program, and in which mode (at most one, unless a
    /// change was interrupted).
    pub fn uplinks(&self) -> Result<Vec<(String, UplinkMode)>> {
        let dir = self.pin_dir.join("links");
        let mut uplinks = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let LinkPin::Uplink(mode, ifname) = LinkPin::parse(&name) {
                uplinks.push((ifname.to_owned(), mode));
            }
        }
        Ok(uplinks)
    }

    /// The id of the program behind the uplink's pinned link, as the kernel reports it; none
    /// when that link is not on the interface now called `ifname`.
    pub fn uplink_link_program_id(&self, ifname: &str, mode: UplinkMode) -> Result<Option<u32>> {
        pinned_link_program_on(&self.uplink_pin(ifname, mode), ifname)
    }

    /// Attaches the socket hooks to the host cgroup with pinned links (idempotent: existing
    /// pins are kept), then detaches them from any other cgroup they were on (the option
    /// changed). Either every hook is on `cgroup`, or, on error, none that this call attached.
    pub fn attach_host_cgroup(&mut self, cgroup: &HostCgroup) -> Result<()> {
        let links = self.pin_dir.join("links");
        let mut made = Vec::new();
        let mut attach_all = || -> Result<()> {
            for (name, program) in &mut self.host_sockets {
                let pin = links.join(LinkPin::host_cgroup_name(cgroup.id, name));
                if pin.exists() {
                    continue;
                }
                // A link on a cgroup always lets other programs run too (BPF_F_ALLOW_MULTI is
                // implied; giving it explicitly is EINVAL), so bpfnet coexists with others'.
                let link_id = program
                    .attach(cgroup.fd(), CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to the cgroup {}", cgroup.path.display()))?;
                let link: FdLink =
                    program.take_link(link_id)?.try_into().context("a cgroup attachment should be an fd link")?;
                link.pin(&pin).with_context(|| format!("pinning the link of {name} at {}", pin.display()))?;
                made.push(pin);
            }
            Ok(())
        };
        if let Err(e) = attach_all() {
            for pin in &made {
                if let Err(cleanup) = remove_pin(pin) {
                    tracing::error!("detaching a socket hook after a failed attach: {cleanup:#}");
                }
            }
            return Err(e);
        }
        for link in self.host_cgroup_links()? {
            if link.cgroup_id != cgroup.id {
                remove_pin(&links.join(LinkPin::host_cgroup_name(link.cgroup_id, &link.program)))?;
            }
        }
        Ok(())
    }

    /// Detaches the socket hooks from whatever cgroup they are on. Idempotent.
    pub fn detach_host_cgroup(&self) -> Result<()> {
        for link in self.host_cgroup_links()? {
            remove_pin(&self.pin_dir.join("links").join(LinkPin::host_cgroup_name(link.cgroup_id, &link.program)))?;
        }
        Ok(())
    }

    /// The socket hooks' pinned links (normally one per hook of HOST_SOCKET_PROGRAMS on one
    /// cgroup, or none).
    pub fn host_cgroup_links(&self) -> Result<Vec<HostCgroupLink>> {
        let dir = self.pin_dir.join("links");
        let mut links = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let LinkPin::HostCgroup { cgroup_id, program } = LinkPin::parse(&name) {
                links.push(HostCgroupLink { cgroup_id, program: program.to_owned() });
            }
        }
        Ok(links)
    }
}
