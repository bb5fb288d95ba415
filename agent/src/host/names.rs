//! Names given by users for networks and containers, and the names bpfnet derives from them.
use anyhow::{bail, Result};

/// A container's name is also the name of its network namespace, a file in /run/netns: the
/// kernel allows at most NAME_MAX (255) bytes for it.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a user-given name: 1 to 255 characters of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit (Docker's rule, which also keeps names safe as file names).
pub fn validate(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("the {kind} name is empty; give a name such as `web1`");
    }
    if name.len() > MAX_NAME_LEN {
        bail!(
            "the {kind} name {}... is {} bytes long, longer than the kernel allows for a \
             namespace name ({MAX_NAME_LEN}); choose a shorter name",
            &name[..16],
            name.len()
        );
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        bail!(
            "the {kind} name {name:?} is invalid: use letters, digits, '_', '.' and '-', \
             starting with a letter or digit"
        );
    }
    Ok(())
}

/// Name of a container's host-side veth: `bn` + 8 hex digits, unique per container on a host
/// and within IFNAMSIZ (15). The container end is created as `bp` + the same digits, then
/// renamed to eth0 inside the container.
pub fn host_interface(seed: u32) -> (String, String) {
    (format!("bn{seed:08x}"), format!("bp{seed:08x}"))
}

/// Whether an interface name has the shape of bpfnet's veth ends (`bn`/`bp` + 8 hex digits).
pub fn is_host_interface(name: &str) -> bool {
    (name.starts_with("bn") || name.starts_with("bp"))
        && name.len() == 10
        && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        validate("network", "web-1.a_b").unwrap();
        assert!(validate("network", "").is_err());
        assert!(validate("network", "-x").is_err());
        assert!(validate("network", "a/b").is_err());
        assert!(validate("network", &"x".repeat(256)).is_err());
        validate("network", &"x".repeat(255)).unwrap();
        let (host, peer) = host_interface(0xdeadbeef);
        assert_eq!((host.as_str(), peer.as_str()), ("bndeadbeef", "bpdeadbeef"));
        assert!(host.len() <= 15);
        assert!(is_host_interface(&host) && is_host_interface(&peer));
        assert!(!is_host_interface("eth0") && !is_host_interface("bnxyz12345"));
    }
}
