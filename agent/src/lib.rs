//! bpfnet: container networking on eBPF, without a Linux bridge or iptables.
//!
//! The folders are the layers, and imports only run downwards:
//! - `cli`: the `bpfnet` verbs, clients of the agent's API;
//! - `cni`: the `bpfnet-cni` plugin, another client of the API (CNI spec types, results
//!   shaped per version, error codes);
//! - `api`: the API's typed requests, answers and routes, shared by the CLI and the daemon;
//! - `daemon`: `bpfnet agent`, the service (settings, server, handlers, uplink follower);
//! - `docker`: Docker's remote network driver protocol, served by the daemon and driving the
//!   host (typed requests and answers, and what each call does on the host);
//! - `host`: the domain: networks, containers, published ports, IPAM, state, reconcile,
//!   conntrack's agent half;
//! - `datapath`: the eBPF programs and maps: loading, pins, attachment, upgrades;
//! - `sys`: kernel adapters (bpf(2), netlink, network namespaces, ethtool, cgroups);
//! - `devkit` (the tests, and the cargo feature `devkit`; never in the shipped binary): the
//!   crafted-packet testbed, BPF_PROG_TEST_RUN, throwaway namespaces and the per-program cost
//!   bench.
pub mod api;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod datapath;
#[cfg(any(test, feature = "devkit"))]
pub mod devkit;
pub mod docker;
pub mod host;
pub mod sys;
