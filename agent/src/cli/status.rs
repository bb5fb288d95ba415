use crate::api::{ConntrackStatus, HostCgroupStatus, RunningDatapath, Status};

/// `bpfnet status`, as text.
pub fn print_text(status: &Status) {
    println!("host namespace: {}", status.host_netns.as_deref().unwrap_or("(the one bpfnet runs in)"));
    println!("networks: {}   containers: {}", status.networks.len(), status.containers.len());
    for n in &status.networks {
        let v6 = n.subnet6.as_ref().zip(n.gateway6.as_ref()).map(|(s, g)| format!(", {s} gateway {g}"));
        println!("  {:<24} {} gateway {}{}", n.name, n.subnet, n.gateway, v6.unwrap_or_default());
    }
    for c in &status.containers {
        if let Some(t) = &c.traffic {
            println!(
                "  {:<24} sent {} packets ({} bytes), received {} packets ({} bytes)",
                c.name, t.sent_packets, t.sent_bytes, t.received_packets, t.received_bytes
            );
        }
    }
    match &status.datapath.running {
        Some(dp) => print_datapath(dp),
        None => println!("datapath: not loaded (no network or container created yet)"),
    }
}

fn print_datapath(dp: &RunningDatapath) {
    println!("datapath programs:");
    for (program, id) in &dp.program_ids {
        println!("  {program:<22} id {id}");
    }
    println!("attached:");
    for a in &dp.attachments {
        let hook = match a.mode.as_deref() {
            Some("xdp") => "xdp",
            _ => "tcx ingress",
        };
        println!(
            "  {:<12} {:<28} {}",
            a.interface,
            a.role,
            if a.attached { format!("attached ({hook})") } else { "NOT ATTACHED".to_owned() }
        );
    }
    match &dp.uplink.masquerade_address {
        Some(addr) => println!("masquerade: to {addr}, ports {}-{}", dp.uplink.nat_ports[0], dp.uplink.nat_ports[1]),
        None => println!("masquerade: off (no --uplink given yet)"),
    }
    match &dp.uplink.masquerade_address6 {
        Some(addr) => println!("IPv6 masquerade: to {addr}"),
        None => println!("IPv6 masquerade: off (the uplink has no usable global IPv6 address)"),
    }
    if let Some(cidr) = &dp.uplink.cluster_cidr {
        println!("native routing: to {cidr} (other nodes' pods), untranslated");
    }
    print_host_cgroup(dp.host_cgroup.as_ref());
    print_conntrack(&dp.conntrack);
    for (title, section) in [("counters", &dp.counters), ("drops by reason", &dp.drops)] {
        println!("{title}:");
        for (name, value) in section {
            println!("  {name:<22} {value}");
        }
    }
}

fn print_host_cgroup(cgroup: Option<&HostCgroupStatus>) {
    let Some(cg) = cgroup else {
        println!("host processes: do not reach published ports (no --host-cgroup)");
        return;
    };
    match (&cg.path, &cg.error) {
        (None, _) => {
            let links: Vec<String> =
                cg.links.iter().map(|l| format!("{} on cgroup {}", l.program, l.cgroup_id)).collect();
            println!("host processes: socket hooks left on a cgroup no longer configured: {}", links.join(", "));
        }
        (Some(path), Some(error)) => println!("host processes: cgroup {}: {error}", path.display()),
        (Some(path), None) => {
            println!("host processes: those in cgroup {} reach published ports", path.display());
            for h in &cg.hooks {
                println!(
                    "  {:<12} {:<28} {}",
                    h.hook,
                    h.program,
                    if h.attached { "attached (cgroup)" } else { "NOT ATTACHED" }
                );
            }
        }
    }
}

fn print_conntrack(ct: &ConntrackStatus) {
    // The limit and the quota are set with the uplink's settings: before that, nothing is
    // translated and nothing tracked.
    if ct.limit == 0 {
        println!("conntrack: {} of {} assured entries in use (limits set once an uplink is)", ct.entries, ct.capacity);
    } else {
        println!("conntrack: {} assured entries in use, limit {}, capacity {}", ct.entries, ct.limit, ct.capacity);
    }
    println!(
        "  unassured: capacity {} (overflow {}), quota {} flows per container or published port",
        ct.unassured_capacity, ct.overflow_capacity, ct.unassured_quota
    );
    println!(
        "  promoted {}, promotion refused {}, quota hits {}, early drops {}",
        ct.promoted, ct.promotion_refused, ct.quota_hits, ct.early_drops
    );
}
