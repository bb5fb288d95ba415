use serde_json::{json, Value};

/// `bpfnet status`, as text.
pub fn print_text(status: &Value) {
    let dp = &status["datapath"];
    println!("host namespace: {}", status["host_netns"].as_str().unwrap_or("(the one bpfnet runs in)"));
    println!(
        "networks: {}   containers: {}",
        status["networks"].as_array().map_or(0, Vec::len),
        status["containers"].as_array().map_or(0, Vec::len)
    );
    for c in status["containers"].as_array().into_iter().flatten() {
        let t = &c["traffic"];
        if !t.is_null() {
            println!(
                "  {:<24} sent {} packets ({} bytes), received {} packets ({} bytes)",
                c["name"].as_str().unwrap_or_default(),
                t["sent_packets"], t["sent_bytes"], t["received_packets"], t["received_bytes"]
            );
        }
    }
    if dp["loaded"] != json!(true) {
        println!("datapath: not loaded (no network or container created yet)");
        return;
    }
    println!("datapath programs: {}", dp["program_ids"]);
    for a in dp["attachments"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:<28} {}",
            a["interface"].as_str().unwrap_or_default(),
            a["role"].as_str().unwrap_or_default(),
            if a["attached"] == json!(true) { "attached (tcx ingress)" } else { "NOT ATTACHED" }
        );
    }
    match dp["uplink"]["masquerade_address"].as_str() {
        Some(addr) => println!("masquerade: to {addr}, ports {}", dp["uplink"]["nat_ports"]),
        None => println!("masquerade: off (no --uplink given yet)"),
    }
    let cg = &dp["host_cgroup"];
    match cg["path"].as_str() {
        None if cg.is_null() => println!("host processes: do not reach published ports (no --host-cgroup)"),
        None => println!("host processes: socket hooks left on a cgroup no longer configured: {}", cg["links"]),
        Some(path) if !cg["error"].is_null() => println!("host processes: cgroup {path}: {}", cg["error"].as_str().unwrap_or_default()),
        Some(path) => {
            println!("host processes: those in cgroup {path} reach published ports");
            for h in cg["hooks"].as_array().into_iter().flatten() {
                println!(
                    "  {:<12} {:<28} {}",
                    h["hook"].as_str().unwrap_or_default(),
                    h["program"].as_str().unwrap_or_default(),
                    if h["attached"] == json!(true) { "attached (cgroup)" } else { "NOT ATTACHED" }
                );
            }
        }
    }
    match serde_json::from_value::<crate::host::conntrack::ConntrackStatus>(dp["conntrack"].clone()) {
        Ok(ct) => print_conntrack(&ct),
        Err(e) => println!("conntrack: unreadable answer ({e})"),
    }
    for (title, section) in [("counters", "counters"), ("drops by reason", "drops")] {
        println!("{title}:");
        for (name, value) in dp[section].as_object().into_iter().flatten() {
            println!("  {name:<22} {value}");
        }
    }
}

fn print_conntrack(ct: &crate::host::conntrack::ConntrackStatus) {
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
