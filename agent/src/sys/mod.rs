//! Kernel adapters: thin, typed wrappers of what bpfnet asks the kernel, with no knowledge of
//! networks or containers.
pub mod bpf;
pub mod cgroup;
pub mod dirs;
pub mod ethtool;
pub mod netlink;
pub mod netns;
