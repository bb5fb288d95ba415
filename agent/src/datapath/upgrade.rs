//! Upgrades: a new bpfnet replaces the running programs behind their links (atomically per
//! link), and moves the maps an older version pinned with another layout or size.
use super::*;

/// CONFIG as an older bpfnet pinned it: a shorter `HostConfig` (fields are only ever added at
/// its end, and each reads 0 as "not set": no quota, no host cgroup, no cluster CIDR). The
/// agent rewrites CONFIG's settings whenever it starts, so instead of refusing to adopt such a
/// datapath, a new version unpins the old map (the running programs keep using it), loads its
/// own (a new pin) with the old settings and the new fields zero, and moves every program to
/// it.
pub(super) struct OutgrownConfig {
    path: PathBuf,
    /// The old map, to pin back if the new programs cannot be loaded.
    old: MapData,
    settings: HostConfig,
}

impl OutgrownConfig {
    /// Sizes of `HostConfig` in earlier versions: before the unassured quota and the host
    /// cgroup's fields were added, and before the cluster CIDR.
    const OLD_SIZES: [usize; 2] =
        [std::mem::offset_of!(HostConfig, ct_unassured_quota), std::mem::offset_of!(HostConfig, cluster_net)];

    /// If the pinned CONFIG has an older layout: reads its settings and unpins it.
    pub(super) fn take(pin_dir: &Path) -> Result<Option<Self>> {
        let path = pin_dir.join("maps").join(map_names::CONFIG);
        let old = match MapData::from_pin(&path) {
            Ok(old) => old,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
        };
        let value_size = old.info()?.value_size() as usize;
        if value_size == std::mem::size_of::<HostConfig>() {
            return Ok(None);
        }
        // Each known size is a prefix of this version's layout; the rest reads as zero.
        let mut bytes = [0u8; std::mem::size_of::<HostConfig>()];
        let maps = pin_dir.join("maps");
        match value_size {
            size if size == Self::OLD_SIZES[0] => {
                bytes[..size].copy_from_slice(&read_value::<{ Self::OLD_SIZES[0] }>(&maps)?)
            }
            size if size == Self::OLD_SIZES[1] => {
                bytes[..size].copy_from_slice(&read_value::<{ Self::OLD_SIZES[1] }>(&maps)?)
            }
            _ => bail!(
                "the pinned map {} has {value_size}-byte values, a layout this bpfnet cannot adopt; remove \
                 the datapath with the bpfnet version that created it (`bpfnet down`)",
                path.display()
            ),
        }
        // SAFETY: `HostConfig` is plain `#[repr(C)]` data without implicit padding (`aya::Pod`),
        // valid for any bit pattern, and `bytes` is exactly its size.
        let settings = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const HostConfig) };
        remove_pin(&path)?;
        Ok(Some(Self { path, old, settings }))
    }

    /// Writes the old settings into the loaded object's (new) CONFIG.
    pub(super) fn copy_into(&self, ebpf: &mut aya::Ebpf) -> Result<()> {
        let map = ebpf.map_mut(map_names::CONFIG).context("the eBPF object has no CONFIG map")?;
        let mut config: Array<&mut MapData, HostConfig> = Array::try_from(map)?;
        config.set(0, self.settings, 0).context("writing the settings into the new CONFIG")
    }

    /// Pins the old map back in place of the new one.
    pub(super) fn restore(&self) -> Result<()> {
        remove_pin(&self.path)?;
        self.old.pin(&self.path).with_context(|| format!("pinning the old CONFIG back at {}", self.path.display()))
    }
}

/// CONFIG's single value, as `N` raw bytes.
fn read_value<const N: usize>(maps: &Path) -> Result<[u8; N]> {
    let array: Array<MapData, [u8; N]> = open_map(maps, map_names::CONFIG)?;
    array.get(&0, 0).with_context(|| format!("reading {}", maps.join(map_names::CONFIG).display()))
}

impl OutgrownConfig {
    pub(super) fn restore_logged(&self) {
        if let Err(restore) = self.restore() {
            tracing::error!("putting the old CONFIG map back: {restore:#}");
        }
    }
}

/// A per-CPU counter array (DROPS, COUNTERS) that an older bpfnet pinned with fewer slots than
/// this version counts (a drop reason or a counter was added since). As for CONFIG, its
/// counts move to a new map of the right size, and it is pinned back if the load fails.
pub(super) struct OutgrownCounters {
    name: &'static str,
    path: PathBuf,
    old: MapData,
    /// Each slot's per-CPU values.
    values: Vec<PerCpuValues<u64>>,
    slots: u32,
}

impl OutgrownCounters {
    /// The counter arrays this version has, with the slots it needs.
    const ARRAYS: [(&'static str, u32); 2] =
        [(map_names::DROPS, DropReason::COUNT), (map_names::COUNTERS, Counter::COUNT)];

    /// Takes (reads and unpins) every pinned counter array that is too small; on error, pins
    /// back what it took.
    pub(super) fn take_all(pin_dir: &Path) -> Result<Vec<Self>> {
        let mut taken: Vec<Self> = Vec::new();
        for (name, slots) in Self::ARRAYS {
            match Self::take(pin_dir, name, slots) {
                Ok(Some(old)) => taken.push(old),
                Ok(None) => {}
                Err(e) => {
                    for old in &taken {
                        old.restore_logged();
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    pub(super) fn take(pin_dir: &Path, name: &'static str, slots: u32) -> Result<Option<Self>> {
        let path = pin_dir.join("maps").join(name);
        if !path.exists() {
            return Ok(None);
        }
        let old = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let old_slots = old.info()?.max_entries();
        if old_slots >= slots {
            return Ok(None);
        }
        let array: PerCpuArray<MapData, u64> = open_map(&pin_dir.join("maps"), name)?;
        let values = (0..old_slots)
            .map(|slot| array.get(&slot, 0).with_context(|| format!("reading slot {slot} of {}", path.display())))
            .collect::<Result<_>>()?;
        remove_pin(&path)?;
        Ok(Some(Self { name, path, old, values, slots }))
    }

    /// Writes the old counts into the loaded object's (new) map.
    pub(super) fn copy_into(&self, ebpf: &mut aya::Ebpf) -> Result<()> {
        let map = ebpf.map_mut(self.name).with_context(|| format!("the eBPF object has no {} map", self.name))?;
        let mut array: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map)?;
        for (slot, values) in self.values.iter().enumerate() {
            let values = PerCpuValues::try_from(values.to_vec())?;
            array
                .set(slot as u32, values, 0)
                .with_context(|| format!("writing slot {slot} of the new {}", self.name))?;
        }
        Ok(())
    }

    /// Pins the old map back in place of the new one.
    pub(super) fn restore_logged(&self) {
        let restored = remove_pin(&self.path).and_then(|()| {
            self.old
                .pin(&self.path)
                .with_context(|| format!("pinning the old {} back at {}", self.name, self.path.display()))
        });
        if let Err(e) = restored {
            tracing::error!("putting the old {} map back: {e:#}", self.name);
        }
    }
}

impl Datapath {
    /// Replaces the pinned programs with this binary's, in every link at once (BPF link
    /// update: no moment without a program), when their code differs (the kernel's tag) or
    /// when `always` (`--reload-programs`). Maps, conntrack and counters stay.
    /// Returns the names of the programs replaced.
    pub fn replace_programs(pin_dir: &Path, always: bool) -> Result<Vec<&'static str>> {
        // Before the loader reuses the pinned maps: CONFIG in an older layout makes way for
        // this version's, and is put back if anything fails before the first link update.
        let outgrown = OutgrownConfig::take(pin_dir)?;
        let outgrown_counters = match OutgrownCounters::take_all(pin_dir) {
            Ok(taken) => taken,
            Err(e) => {
                if let Some(old) = &outgrown {
                    old.restore_logged();
                }
                return Err(e);
            }
        };
        let loaded = load_object(pin_dir, DEFAULT_CT_ENTRIES).and_then(|mut ebpf| {
            if let Some(old) = &outgrown {
                old.copy_into(&mut ebpf)?;
            }
            for old in &outgrown_counters {
                old.copy_into(&mut ebpf)?;
            }
            Ok(ebpf)
        });
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(e) => {
                if let Some(old) = &outgrown {
                    old.restore_logged();
                }
                for old in &outgrown_counters {
                    old.restore_logged();
                }
                return Err(e);
            }
        };
        if outgrown.is_some() {
            tracing::info!("CONFIG had an older layout: moved its settings to a new map, every program is replaced");
        }
        for old in &outgrown_counters {
            tracing::info!(
                "{} had {} slots: moved its counts to a new map of {}, every program is replaced",
                old.name,
                old.values.len(),
                old.slots
            );
        }
        // Before any link runs a new program: the new entry programs find their IPv6
        // programs in place at once (and the old ones, until replaced, reach the new ones).
        fill_tail_calls(&mut ebpf)?;
        // The old programs use the old maps: all of them move to the new ones.
        let always = always || outgrown.is_some() || !outgrown_counters.is_empty();
        let mut replaced = Vec::new();
        for name in PROGRAMS {
            let new = ebpf.program_mut(name).with_context(|| format!("no {name} in the object"))?;
            let pin = pin_dir.join("progs").join(name);
            // A program that an older bpfnet did not have is simply pinned.
            if pin.exists() {
                let old =
                    ProgramInfo::from_pin(&pin).with_context(|| format!("opening pinned program {}", pin.display()))?;
                if !always && new.info()?.tag() == old.tag() {
                    continue;
                }
            }
            for link_pin in link_pins_of(pin_dir, name)? {
                // The link (and its pin) stays; only the program behind it changes, atomically.
                replace_behind_link(new, &link_pin)
                    .with_context(|| format!("replacing {name} behind {}", link_pin.display()))?;
            }
            remove_pin(&pin)?;
            new.pin(&pin).with_context(|| format!("pinning the new {name} at {}", pin.display()))?;
            replaced.push(name);
        }
        Ok(replaced)
    }
}
