//! Network namespaces for tests and measurements: named ones unique to this process, removed
//! when their guard drops (also on panic), as aya's integration tests make theirs.
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use crate::sys::netns::{create, delete};

/// Named namespaces unique to this process, deleted on drop (also on panic): for tests and
/// for measurements that need interfaces of their own (`bpfnet-devkit program-cost`).
pub struct ThrowawayNamespaces {
    pub names: Vec<String>,
}

impl ThrowawayNamespaces {
    /// Reserves `count` names `<stem><pid>x<n>`, unique to this process, without creating them.
    pub fn reserve(stem: &str, count: usize) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let names = (0..count)
            .map(|_| format!("{stem}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
            .collect();
        ThrowawayNamespaces { names }
    }

    /// Reserves and creates `count` namespaces; those made before a failure are deleted.
    pub fn try_create(stem: &str, count: usize) -> Result<Self> {
        let mut guard = Self::reserve(stem, count);
        let names = std::mem::take(&mut guard.names);
        for name in names {
            create(&name)?;
            guard.names.push(name);
        }
        Ok(guard)
    }
}

impl Drop for ThrowawayNamespaces {
    fn drop(&mut self) {
        for name in &self.names {
            // Never panic here: we may already be unwinding.
            if let Err(e) = delete(name) {
                eprintln!("cleanup: deleting network namespace {name}: {e:#}");
            }
        }
    }
}

/// The tests' throwaway namespaces: `bnt<pid>x<n>`.
pub type TestNamespaces = ThrowawayNamespaces;

impl ThrowawayNamespaces {
    /// Reserves and creates `count` test namespaces (panics if that fails).
    pub fn create(count: usize) -> Self {
        Self::try_create("bnt", count).unwrap()
    }
}

/// The tests that create namespaces and load programs need root: without it they fail (they
/// never pass without having run). Returns true, so that `if !is_root() { return; }` reads.
pub fn is_root() -> bool {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and loads eBPF programs: run it as root (cargo xtask test)"
    );
    true
}
