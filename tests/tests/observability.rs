//! Observability with real traffic: `/metrics` counts a spoofed flood from a container
//! exactly, `bpfnet monitor` shows its drops and a published port's new flow with both
//! tuples, a flood with the monitor on reports lost events instead of stalling, the counters
//! survive a kill -9 of the agent, `bpfnet stats` reads rates, and the Grafana dashboard and
//! alert rules query only metrics the agent serves.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
    time::Duration,
};

use bpfnet_tests::{api_get, in_netns, ping, run, syn_flood, Sandbox, OUTSIDE_IP, UPLINK_HOST_IP};
use nix::sys::signal::Signal;
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

/// Spoofed sources: TEST-NET-3, addresses no namespace has.
const SPOOFED: (Ipv4Addr, u8) = (Ipv4Addr::new(203, 0, 113, 0), 24);

/// A host with an uplink, a network and a container `web` publishing 8080 -> 80.
fn sandbox() -> (Sandbox, String) {
    sandbox_with(Sandbox::with_uplink())
}

fn sandbox_with(sb: Sandbox) -> (Sandbox, String) {
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.232.0.0/24"]);
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "-p", "8080:80"]);
    (sb, web)
}

/// `/metrics` from the API socket, parsed as Prometheus parses its text format.
#[track_caller]
fn scrape(sb: &Sandbox) -> Scrape {
    let (status, content_type, body) = api_get(sb.socket(), "/metrics", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("the metrics parse as Prometheus text")
}

/// The value of the sample `metric` whose labels include `labels`.
#[track_caller]
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {metric} {labels:?} in the metrics"));
    match found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is {other:?}"),
    }
}

/// Starts `bpfnet monitor ARGS --json` (for 30 s at most) and waits until it listens (its
/// first line, from stderr); its next lines are events.
fn start_monitor(sb: &mut Sandbox, args: &[&str]) -> bpfnet_tests::BackgroundId {
    let mut cmd = std::process::Command::new("sh");
    let cli = sb.cli();
    let program = cli.get_program().to_string_lossy().into_owned();
    let cli_args: Vec<String> = cli.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    cmd.arg("-c")
        .arg(r#"exec timeout 30 "$@" 2>&1"#)
        .arg("sh")
        .arg(program)
        .args(cli_args)
        .arg("monitor")
        .arg("--json");
    cmd.args(args).stdout(Stdio::piped());
    let id = sb.spawn("bpfnet monitor", cmd).unwrap();
    let first = sb.read_line(id).unwrap();
    assert!(first.contains("listening"), "the monitor said {first:?}");
    id
}

fn event(line: &str) -> Json {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("monitor line {line:?}: {e}"))
}

#[test]
fn a_spoofed_flood_is_counted_exactly_and_shown_with_its_reason_and_addresses() {
    let (mut sb, web) = sandbox();
    let gateway = Ipv4Addr::new(10, 232, 0, 1);
    assert!(ping(&web, gateway), "the container reaches its gateway (its ARP entry made)");
    let before = scrape(&sb);
    let spoofed_before = sample(&before, "bpfnet_drops_total", &[("reason", "spoofed_source")]);
    let web_before = sample(&before, "bpfnet_container_drops_total", &[("container", &web)]);
    const FLOOD: u32 = 300;
    let count = FLOOD.to_string();
    let monitor = start_monitor(&mut sb, &["--type", "drop", "--container", &web, "--count", &count]);
    syn_flood(&web, SPOOFED, OUTSIDE_IP, 9000..=9009, FLOOD).unwrap();
    let after = scrape(&sb);
    let spoofed = sample(&after, "bpfnet_drops_total", &[("reason", "spoofed_source")]) - spoofed_before;
    assert_eq!(spoofed, f64::from(FLOOD), "spoofed_source drops");
    let web_drops = sample(&after, "bpfnet_container_drops_total", &[("container", &web)]) - web_before;
    assert_eq!(web_drops, f64::from(FLOOD), "the container's drops");
    // Read as they come: a pipe holds only 64 KiB.
    let events: Vec<Json> = (0..FLOOD).map(|_| event(&sb.read_line(monitor).unwrap())).collect();
    sb.finish(monitor, Duration::from_secs(10)).unwrap();
    for e in &events {
        assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("drop"), Some("spoofed_source")), "{e}");
        assert_eq!(e["container"], web.as_str(), "{e}");
        let packet = &e["packet"];
        let source: Ipv4Addr = packet["source"].as_str().unwrap().parse().unwrap();
        assert_eq!(source.octets()[..3], [203, 0, 113], "{e}");
        assert_eq!(packet["destination"], OUTSIDE_IP.to_string(), "{e}");
        assert_eq!(packet["protocol"], "tcp", "{e}");
        assert!((9000..=9009).contains(&packet["destination_port"].as_u64().unwrap()), "{e}");
        assert_eq!(e["length"], 54, "a 40-byte SYN in an Ethernet frame: {e}");
    }
    // The agent kept them: the last five again, without waiting for new ones.
    let replay = sb.ok(&["monitor", "--json", "--type", "drop", "--container", &web, "--last", "5", "--count", "5"]);
    assert_eq!(replay.lines().map(event).filter(|e| e["reason"] == "spoofed_source").count(), 5, "{replay}");
    sb.teardown().unwrap();
}

#[test]
fn a_connection_to_a_published_port_is_a_dnat_flow_with_both_tuples_until_it_expires() {
    let mut sb = Sandbox::with_uplink();
    // A closed connection expires a second after its last packet, collected every second.
    for state in ["FIN", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"] {
        sb.set_agent_env(&format!("BPFNET_CT_TIMEOUT_TCP_{state}"), "1");
    }
    sb.set_agent_env("BPFNET_GC_INTERVAL", "1");
    let (mut sb, web) = sandbox_with(sb);
    let web_ip = sb.container_ip(&web);
    sb.tcp_echo_server(&web, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 1);
    let monitor = start_monitor(&mut sb, &["--type", "flow", "--container", &web, "--count", "2"]);
    let echoed =
        bpfnet_tests::tcp_exchange(sb.outside_netns(), SocketAddrV4::new(UPLINK_HOST_IP, 8080), b"hello").unwrap();
    assert_eq!(echoed, b"hello");
    let new = event(&sb.read_line(monitor).unwrap());
    let expired = event(&sb.read_line(monitor).unwrap());
    sb.finish(monitor, Duration::from_secs(10)).unwrap();
    assert_eq!(expired["event"], "expired", "{expired}");
    for field in ["kind", "container", "original", "translated"] {
        assert_eq!(expired[field], new[field], "{field}");
    }
    let e = new;
    assert_eq!(
        (e["type"].as_str(), e["event"].as_str(), e["kind"].as_str()),
        (Some("flow"), Some("new"), Some("dnat"))
    );
    assert_eq!(e["container"], web.as_str());
    let (original, translated) = (&e["original"], &e["translated"]);
    assert_eq!(original["protocol"], "tcp");
    assert_eq!(original["source"], OUTSIDE_IP.to_string());
    assert_eq!(original["destination"], UPLINK_HOST_IP.to_string());
    assert_eq!(original["destination_port"], 8080);
    assert_eq!(translated["source"], OUTSIDE_IP.to_string(), "the client's address is kept");
    assert_eq!(translated["source_port"], original["source_port"]);
    assert_eq!(translated["destination"], web_ip.to_string());
    assert_eq!(translated["destination_port"], 80);
    sb.teardown().unwrap();
}

#[test]
fn a_flood_with_the_monitor_on_reports_lost_events_and_the_agent_keeps_answering() {
    let (mut sb, web) = sandbox();
    assert!(ping(&web, Ipv4Addr::new(10, 232, 0, 1)));
    let monitor = start_monitor(&mut sb, &["--type", "drop"]);
    let spoofed = |sb: &Sandbox| sample(&scrape(sb), "bpfnet_drops_total", &[("reason", "spoofed_source")]) as u64;
    let before = spoofed(&sb);
    // Far more than a CPU's budget (1,024 at once, 10,000 a second).
    syn_flood(&web, SPOOFED, OUTSIDE_IP, 9000..=9009, 40_000).unwrap();
    sb.ok(&["status"]);
    // What the raw socket did send (it skips what its queue refuses).
    let dropped = spoofed(&sb) - before;
    assert!(dropped > 20_000, "{dropped} drops");
    // The events written (a few thousand at most), and reports of the rest as the agent
    // reads the datapath's count each second, until they add up. A busy machine may also make
    // this listener fall behind the agent (slow_listener): those are counted too.
    let (mut written, mut rate_limited, mut lost) = (0u64, 0u64, 0u64);
    while written + lost < dropped {
        let e = event(&sb.read_line(monitor).unwrap());
        match e["type"].as_str() {
            Some("lost") => {
                let count = e["count"].as_u64().unwrap();
                match e["cause"].as_str() {
                    Some("rate_limited") => rate_limited += count,
                    Some("slow_listener") => {}
                    _ => panic!("lost for an unexpected cause: {e}"),
                }
                lost += count;
            }
            _ => written += 1,
        }
    }
    assert_eq!(written + lost, dropped, "every drop was written or reported lost");
    assert!(rate_limited > 10_000, "{rate_limited} rate-limited, {lost} lost in all, {written} written");
    let metrics = scrape(&sb);
    assert!(sample(&metrics, "bpfnet_events_lost_total", &[("cause", "rate_limited")]) > 10_000.0);
    sb.teardown().unwrap();
}

#[test]
fn metrics_parse_in_both_formats_serve_over_tcp_and_survive_a_kill() {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_METRICS_LISTEN", "127.0.0.1:9464");
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.232.0.0/24"]);
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "-p", "8080:80"]);
    assert!(ping(&web, Ipv4Addr::new(10, 232, 0, 1)));
    syn_flood(&web, SPOOFED, OUTSIDE_IP, 9000..=9000, 25).unwrap();
    let before = scrape(&sb);
    let spoofed = sample(&before, "bpfnet_drops_total", &[("reason", "spoofed_source")]);
    assert_eq!(spoofed, 25.0);
    for (metric, labels) in [
        ("bpfnet_containers", vec![]),
        ("bpfnet_datapath_loaded", vec![]),
        ("bpfnet_container_sent_packets_total", vec![("container", web.as_str()), ("network", net.as_str())]),
        ("bpfnet_packets_total", vec![("kind", "arp_replied")]),
        ("bpfnet_flows_created_total", vec![("kind", "dnat")]),
        ("bpfnet_conntrack_capacity", vec![("table", "assured")]),
        ("bpfnet_map_pressure", vec![("map", "conntrack")]),
        ("bpfnet_map_pressure", vec![("map", "published_ports")]),
        ("bpfnet_program_attached", vec![("container", web.as_str()), ("program", "from_endpoint")]),
        ("bpfnet_program_attached", vec![("interface", "up0"), ("program", "from_uplink")]),
        ("bpfnet_api_requests_total", vec![("route", "/v1/containers"), ("method", "POST"), ("code", "200")]),
    ] {
        sample(&before, metric, &labels);
    }
    assert_eq!(sample(&before, "bpfnet_program_attached", &[("container", &web)]), 1.0);
    assert_eq!(sample(&before, "bpfnet_map_entries", &[("map", "published_ports")]), 1.0);
    // No address or port in any label.
    for s in &before.samples {
        for (key, value) in s.labels.iter() {
            assert!(value.parse::<Ipv4Addr>().is_err() && !value.contains("10.232."), "{} {key}={value}", s.metric);
        }
    }
    let (status, content_type, body) =
        api_get(sb.socket(), "/metrics", Some("application/openmetrics-text;version=1.0.0")).unwrap();
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(body.ends_with("# EOF\n") && body.contains("# TYPE bpfnet_drops counter\n"), "{body}");
    let over_tcp = in_netns(sb.host_netns(), || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect("127.0.0.1:9464")?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .unwrap();
    assert!(over_tcp.starts_with("HTTP/1.1 200") && over_tcp.contains("bpfnet_drops_total"), "{over_tcp}");
    sb.stop_agent(Signal::SIGKILL);
    sb.restart_agent().unwrap();
    let after = scrape(&sb);
    assert_eq!(sample(&after, "bpfnet_drops_total", &[("reason", "spoofed_source")]), spoofed, "kept across kill -9");
    let (status, _, body) = api_get(sb.socket(), "/v1/monitor?reason=spoofed", None).unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("unknown drop reason \\\"spoofed\\\"") && body.contains("spoofed_source"), "{body}");
    let err = sb.fails(&["monitor", "--ip", "10.0.0.300"]);
    assert!(err.contains("neither an IPv4 address nor a network"), "{err}");
    sb.teardown().unwrap();
}

#[test]
fn stats_shows_rates_per_container() {
    let (sb, web) = sandbox();
    run("ip", &["netns", "exec", &web, "ping", "-q", "-c", "30", "-i", "0.05", "10.232.0.1"]).unwrap();
    let out = sb.ok(&["stats", "--no-stream", "--json", &web]);
    let rows: Json = serde_json::from_str(out.trim()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["name"], web.as_str());
    for field in ["received_packets_per_sec", "sent_bytes_per_sec", "drops_per_sec"] {
        assert!(rows[0][field].as_f64().is_some_and(|v| v >= 0.0), "{field}: {out}");
    }
    let table = sb.ok(&["stats", "--no-stream"]);
    assert!(table.starts_with("NAME") && table.contains(&web), "{table}");
    let err = sb.fails(&["stats", "--no-stream", "nosuch"]);
    assert!(err.contains("no such container: nosuch"), "{err}");
    sb.teardown().unwrap();
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_the_agent_serves() {
    let (sb, _web) = sandbox();
    let (_, _, body) = api_get(sb.socket(), "/metrics", None).unwrap();
    let mut served = BTreeSet::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        served.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                served.insert(format!("{name}{suffix}"));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for file in ["docs/monitoring/grafana-dashboard.json", "docs/monitoring/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let queried = metric_names(&text);
        assert!(queried.len() >= 4, "{file} queries {queried:?}");
        let unknown: Vec<&String> = queried.iter().filter(|m| !served.contains(*m)).collect();
        assert!(unknown.is_empty(), "{file} queries metrics the agent does not serve: {unknown:?}");
    }
    sb.teardown().unwrap();
}

/// Every `bpfnet_...` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bpfnet_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}
