//! Loading: the embedded eBPF object, its maps pinned by name, its programs loaded and pinned,
//! and the bpffs pin directory (made, checked, removed).
use super::*;

/// The object built by build.rs from datapath-ebpf.
pub(crate) static DATAPATH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// bpffs magic number (statfs f_type), from linux/magic.h.
pub(super) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Programs in the object, all pinned under `progs/`.
pub(super) const PROGRAMS: [&str; 13] = [
    program_names::FROM_ENDPOINT,
    program_names::FROM_UPLINK,
    program_names::FROM_UPLINK_XDP,
    program_names::SOCK_CONNECT4,
    program_names::SOCK_SENDMSG4,
    program_names::SOCK_RECVMSG4,
    program_names::SOCK_GETPEER4,
    program_names::SOCK_CONNECT6,
    program_names::SOCK_RECVMSG6,
    program_names::SOCK_GETPEER6,
    program_names::FROM_ENDPOINT6,
    program_names::FROM_UPLINK6,
    program_names::FROM_UPLINK6_XDP,
];

/// Removes every pin under `pin_dir` (links first, so programs detach) and the directory.
/// The programs and maps are freed by the kernel once nothing refers to them. Idempotent.
pub fn destroy(pin_dir: &Path) -> Result<()> {
    for sub in ["links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            remove_pin(&entry?.path())?;
        }
        remove_dir(&dir)?;
    }
    remove_dir(pin_dir)
}

pub(super) fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

pub(super) fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing pin {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Loads a program of the object into the kernel, whatever its type.
pub(super) fn load_program(program: &mut Program, name: &str) -> Result<()> {
    match program {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        other => bail!("{name} has a program type bpfnet does not load: {:?}", other.prog_type()),
    }
    .with_context(|| format!("loading {name} into the kernel"))
}

pub(super) fn open_program(pin_dir: &Path, name: &str) -> Result<SchedClassifier> {
    let pin = pin_dir.join("progs").join(name);
    SchedClassifier::from_pin(&pin).with_context(|| {
        format!(
            "opening pinned program {}; if an older bpfnet pinned this datapath, remove it \
             with that version's `bpfnet down`",
            pin.display()
        )
    })
}

/// The loader of the embedded object: maps pinned by name under `maps/` (an existing pin is
/// reused, so a second load shares the first one's maps).
pub(super) fn loader<'a>(pin_dir: &Path, ct_entries: u32) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir.join("maps"));
    let maps = pin_dir.join("maps");
    for table in CtTable::ALL {
        let entries = table.entries_for(ct_entries);
        loader.map_max_entries(table.map_name(), entries);
        // IPv6's tables take the size of IPv4's as pinned (a datapath pinned before IPv6 was
        // made with another --ct-size, perhaps): the fill limit, derived from `CT`'s size,
        // then fits `CT6` as well.
        let pinned = MapData::from_pin(maps.join(table.map_name())).ok().and_then(|map| map.info().ok());
        let ipv6 = pinned.map_or(entries, |info| info.max_entries());
        loader.map_max_entries(<Ipv6Be as CtFamily>::map_name(table), ipv6);
    }
    loader
}

/// The embedded object with its maps created or adopted (pinned by name) and every program
/// loaded into the kernel (checked by the verifier), nothing pinned or attached yet.
pub(super) fn load_object(pin_dir: &Path, ct_entries: u32) -> Result<aya::Ebpf> {
    let mut ebpf = loader(pin_dir, ct_entries)
        .load(DATAPATH_OBJECT)
        .context("loading the eBPF object (see the verifier log above, if any)")?;
    for name in PROGRAMS {
        let program = ebpf.program_mut(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        load_program(program, name)?;
    }
    Ok(ebpf)
}

/// Points the program arrays' slots at the loaded object's programs (`TAIL_CALLED`), replacing
/// whatever programs an earlier load put there: from then on every entry program that tail
/// calls (old or new) continues in this object's.
pub(super) fn fill_tail_calls(ebpf: &mut aya::Ebpf) -> Result<()> {
    for (name, array_name, slot) in program_names::TAIL_CALLED {
        let program = ebpf.program(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        let fd = program.fd().and_then(|fd| Ok(fd.try_clone()?)).with_context(|| format!("{name} is not loaded"))?;
        let map = ebpf.map_mut(array_name).with_context(|| format!("the eBPF object has no {array_name} map"))?;
        let mut array: ProgramArray<&mut MapData> = ProgramArray::try_from(map)?;
        array.set(slot, &fd, 0).with_context(|| format!("putting {name} into slot {slot} of {array_name}"))?;
    }
    Ok(())
}

pub(super) fn load_and_pin(pin_dir: &Path, ct_entries: u32) -> Result<()> {
    let mut ebpf = load_object(pin_dir, ct_entries)?;
    fill_tail_calls(&mut ebpf)?;
    // The from_endpoint pin is written last: its presence means the whole datapath is pinned.
    for name in PROGRAMS.iter().rev() {
        let program = ebpf.program_mut(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        let pin = pin_dir.join("progs").join(name);
        remove_pin(&pin)?; // left by an interrupted load
        program.pin(&pin).with_context(|| format!("pinning {name} at {}", pin.display()))?;
    }
    Ok(())
}

pub(super) fn open_map<T>(maps_dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = maps_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))?;
    T::try_from(map).with_context(|| format!("map {} has an unexpected type", path.display()))
}

pub(super) fn ignore_missing_key(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The pin directory must be on a bpffs. /sys/fs/bpf is mounted if it is not yet, as the
/// kernel leaves it unmounted on some distributions; any other place must be bpffs already.
pub(super) fn ensure_on_bpffs(pin_dir: &Path) -> Result<()> {
    let sys_fs_bpf = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(sys_fs_bpf) && !is_bpffs(sys_fs_bpf)? {
        nix::mount::mount(Some("bpf"), sys_fs_bpf, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe)? {
        bail!(
            "pin directory {} is not on a bpf filesystem; use a directory under /sys/fs/bpf \
             (--bpffs) or mount one with `mount -t bpf bpf DIR`",
            pin_dir.display()
        );
    }
    Ok(())
}

pub(super) fn is_bpffs(path: &Path) -> Result<bool> {
    let stat = nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
