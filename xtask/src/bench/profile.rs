//! `cargo xtask bench --perf`: where a packet's time goes. While a 64-byte UDP run goes
//! through a datapath, `perf record` samples the client's and the server's CPUs (cpu-clock:
//! the VM has no hardware counters); the samples of the workload's own processes (and of
//! the softirq threads) are sorted into parts of the path by kernel symbol, and the summary
//! with the top symbols is written next to results.json as `perf-<datapath>.txt`.
//!
//! The parts are an approximation by symbol name (see [`part`]): a sample is counted where
//! the CPU was, not in the function that called it (no call graphs), so the eBPF share is
//! the programs' own code plus the helpers and maps they call. cpu-clock samples are timer
//! interrupts: time spent with interrupts off is counted where they come back on.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command;

/// Samples per second and CPU.
const FREQUENCY: &str = "999";
/// How long `perf report` may take.
const REPORT_LIMIT: Duration = Duration::from_secs(120);
/// Symbols listed in a summary.
const TOP: usize = 25;

/// One line of `perf report --sort comm,dso,sym -n -t ';'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub samples: u64,
    pub comm: String,
    pub dso: String,
    /// `[k]` kernel, else user space.
    pub kernel: bool,
    pub symbol: String,
}

/// A `perf record` running for `secs` seconds on `cpus` (all CPUs when None).
pub struct Recording {
    child: Child,
    data: PathBuf,
    secs: f64,
}

impl Recording {
    pub fn start(data: &Path, cpus: Option<&str>, secs: f64) -> Result<Recording> {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-F", FREQUENCY, "-o"]).arg(data);
        match cpus {
            Some(cpus) => cmd.args(["-C", cpus]),
            None => cmd.arg("-a"),
        };
        cmd.args(["--", "sleep", &format!("{secs}")]).stdout(Stdio::null());
        command::announce(&cmd);
        let child = cmd.spawn().with_context(|| {
            format!("could not start `{}`: is perf installed? (apt-get install linux-perf)", command::display(&cmd))
        })?;
        Ok(Recording { child, data: data.to_owned(), secs })
    }

    /// Waits for the recording to end and reads it; the data file is removed.
    pub fn finish(mut self) -> Result<Vec<Line>> {
        let limit = Duration::from_secs_f64(self.secs) + Duration::from_secs(30);
        let status = command::wait_bounded(&mut self.child, limit).context("perf record")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let mut cmd = Command::new("perf");
        cmd.args(["report", "-i"]).arg(&self.data).args([
            "--stdio",
            "--no-children",
            "--sort",
            "comm,dso,sym",
            "-n",
            "-t",
            ";",
            "--percent-limit",
            "0",
        ]);
        let text = command::output_bounded(&mut cmd, REPORT_LIMIT);
        let _ = std::fs::remove_file(&self.data);
        let lines = parse(&text?);
        if lines.is_empty() {
            bail!("perf recorded no samples");
        }
        Ok(lines)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Finished already: kill fails and wait returns at once.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.data);
    }
}

/// The sample lines of `perf report --sort comm,dso,sym -n -t ';'` (overhead; samples; comm;
/// dso; `[k] symbol`); headers and anything else are skipped.
pub fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            // The symbol is last and may itself contain the separator.
            let fields: Vec<&str> = line.splitn(5, ';').map(str::trim).collect();
            let [overhead, samples, comm, dso, symbol] = fields[..] else {
                return None;
            };
            overhead.strip_suffix('%')?.parse::<f64>().ok()?;
            let (marker, symbol) = symbol.split_once(' ')?;
            Some(Line {
                samples: samples.parse().ok()?,
                comm: comm.to_owned(),
                dso: dso.to_owned(),
                kernel: marker == "[k]",
                symbol: symbol.trim().to_owned(),
            })
        })
        .collect()
}

/// Whether a sample belongs to the workload: the load generator (client and server) and the
/// softirq threads that finish its packets.
pub fn is_workload(comm: &str) -> bool {
    comm == "loadgen" || comm.starts_with("ksoftirqd")
}

/// The part of a packet's path a symbol belongs to, by name.
pub fn part(line: &Line) -> &'static str {
    if !line.kernel {
        return "user space (load generator)";
    }
    let s = line.symbol.as_str();
    let any = |prefixes: &[&str]| prefixes.iter().any(|p| s.starts_with(p));
    if any(&["bpf_lsm_", "__bpf_prog_enter", "__bpf_prog_exit", "bpf_trampoline"]) {
        // The LSM hooks' stubs (in every socket call) and the fentry/fexit trampolines of
        // tracing programs: not a datapath's.
        "other kernel"
    } else if any(&["bpf_prog_"]) || line.dso.contains("bpf_prog") {
        "eBPF programs (JIT code)"
    } else if any(&["bpf_", "__bpf_", "htab_", "__htab_", "htab_lru", "array_map_", "tcx_"]) {
        "eBPF helpers, maps, tcx hook"
    } else if any(&["nf_", "__nf_", "nft_", "ipt_", "iptable_", "ipv4_conntrack", "br_nf"]) {
        "netfilter (iptables, conntrack)"
    } else if any(&["br_", "__br_"]) {
        "bridge"
    } else if any(&["veth_"]) {
        "veth"
    } else if any(&[
        "entry_SYSCALL",
        "do_syscall",
        "syscall_",
        "__x64_sys",
        "x64_sys_call",
        "__sys_",
        "___sys_",
        "do_sendmmsg",
        "do_recvmmsg",
        "__do_sys",
        "import_iovec",
        "__import_iovec",
        "fdget",
        "__fdget",
    ]) {
        "syscall entry and exit"
    } else if any(&[
        "ip_",
        "__ip_",
        "ipv4_",
        "udp",
        "__udp",
        "inet_",
        "fib_",
        "sock_",
        "sk_",
        "__sk_",
        "rt_",
        "dst_",
        "neigh_",
        "icmp_",
        "skb_copy_datagram",
        "__skb_recv",
        "__skb_datagram",
        "__skb_try_recv",
        "security_socket",
    ]) {
        "IPv4, UDP, sockets"
    } else if any(&[
        "__netif_",
        "netif_",
        "__dev_",
        "dev_",
        "net_rx_action",
        "process_backlog",
        "__napi",
        "napi_",
        "skb_",
        "__skb",
        "kfree_skb",
        "consume_skb",
        "__alloc_skb",
        "alloc_skb",
        "sch_",
        "__qdisc",
        "qdisc_",
        "eth_",
        "validate_xmit",
        "handle_softirqs",
        "__do_softirq",
        "do_softirq",
        "__local_bh",
        "enqueue_to_backlog",
    ]) {
        "net core (devices, skbs, softirq)"
    } else if any(&[
        "kmem_cache",
        "__kmalloc",
        "kmalloc",
        "kfree",
        "__slab",
        "slab_",
        "___slab",
        "memcpy",
        "memset",
        "__memcpy",
        "__memset",
        "copy_",
        "_copy_",
        "rep_movs",
        "__check_object",
        "check_heap",
        "page_",
        "__page",
        "allocate_slab",
        "__pi_memset",
        "__pi_memcpy",
    ]) {
        "memory and copies"
    } else if any(&["_raw_spin", "raw_spin", "__schedule", "schedule", "try_to_wake", "finish_task"]) {
        "locks and scheduling"
    } else {
        "other kernel"
    }
}

/// The summary: the workload's share of the samples, its parts, and its top symbols.
pub fn summary(lines: &[Line], title: &str) -> String {
    let total: u64 = lines.iter().map(|l| l.samples).sum();
    let workload: Vec<&Line> = lines.iter().filter(|l| is_workload(&l.comm)).collect();
    let ours: u64 = workload.iter().map(|l| l.samples).sum();
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            n as f64 * 100.0 / of as f64
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{total} samples on the recorded CPUs; {ours} ({:.1} %) of the workload (loadgen, ksoftirqd), \
         the shares below are of those. cpu-clock sampling: time with interrupts off is counted \
         where they come back on (e.g. __local_bh_enable_ip).",
        pct(ours, total)
    );
    let mut by_comm: BTreeMap<&str, u64> = BTreeMap::new();
    for line in lines {
        *by_comm.entry(line.comm.as_str()).or_default() += line.samples;
    }
    let mut comms: Vec<(&str, u64)> = by_comm.into_iter().collect();
    comms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = comms.iter().take(6).map(|(comm, n)| format!("{comm} {:.1} %", pct(*n, total))).collect();
    let _ = writeln!(out, "by process, of all samples: {}", shown.join(", "));

    let mut top = workload.clone();
    top.sort_by_key(|line| std::cmp::Reverse(line.samples));
    // Per part: its samples and its symbols, most sampled first (top is sorted).
    let mut parts: BTreeMap<&str, (u64, Vec<&str>)> = BTreeMap::new();
    for line in &top {
        let entry = parts.entry(part(line)).or_default();
        entry.0 += line.samples;
        entry.1.push(line.symbol.as_str());
    }
    let mut parts: Vec<(&str, (u64, Vec<&str>))> = parts.into_iter().collect();
    parts.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
    let _ = writeln!(out, "\nwhere the workload's time goes (the part's top symbols):");
    for (name, (n, symbols)) in &parts {
        let shown: Vec<&str> = symbols.iter().take(3).copied().collect();
        let _ = writeln!(out, "{:>6.1} %  {name:<34} ({})", pct(*n, ours), shown.join(", "));
    }
    let _ = writeln!(out, "\ntop {TOP} symbols of the workload:");
    for line in top.iter().take(TOP) {
        let _ = writeln!(
            out,
            "{:>6.1} %  {:<5} {:<12} {:<40} {}",
            pct(line.samples, ours),
            if line.kernel { "[k]" } else { "[.]" },
            line.comm,
            line.symbol,
            part(line)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 3K of event 'cpu-clock:ppp'
#
# Overhead;Samples;Command        ;Shared Object      ;Symbol
 30.00% ;300;loadgen        ;[kernel.kallsyms]  ;[k] veth_xmit
 20.00% ;200;loadgen        ;[kernel.kallsyms]  ;[k] bpf_prog_3b185187f1855c4c_from_endpoint
 10.00% ;100;ksoftirqd/1    ;[kernel.kallsyms]  ;[k] __udp4_lib_rcv
 10.00% ;100;loadgen        ;loadgen            ;[.] xtask::bench::loadgen::flood
  5.00% ;50;loadgen         ;[kernel.kallsyms]  ;[k] htab_map_lookup_elem
  5.00% ;50;loadgen         ;[kernel.kallsyms]  ;[k] entry_SYSCALL_64
 20.00% ;200;rustc          ;librustc_driver.so ;[.] rustc_middle::ty::something; with a semicolon
";

    #[test]
    fn report_lines_are_parsed() {
        let lines = parse(REPORT);
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert_eq!(lines[6].symbol, "rustc_middle::ty::something; with a semicolon");
        assert_eq!(
            lines[0],
            Line {
                samples: 300,
                comm: "loadgen".into(),
                dso: "[kernel.kallsyms]".into(),
                kernel: true,
                symbol: "veth_xmit".into(),
            }
        );
        assert!(!lines[3].kernel);
        assert!(parse("garbage\n 1.0% ;x;a;b;[k] c\n").is_empty());
    }

    #[test]
    fn symbols_are_sorted_into_parts() {
        let lines = parse(REPORT);
        let lsm = Line { symbol: "bpf_lsm_socket_recvmsg".into(), ..lines[0].clone() };
        assert_eq!(part(&lsm), "other kernel");
        let parts: Vec<&str> = lines[..6].iter().map(part).collect();
        assert_eq!(
            parts,
            [
                "veth",
                "eBPF programs (JIT code)",
                "IPv4, UDP, sockets",
                "user space (load generator)",
                "eBPF helpers, maps, tcx hook",
                "syscall entry and exit",
            ]
        );
    }

    #[test]
    fn summary_counts_only_the_workload() {
        let summary = summary(&parse(REPORT), "test");
        // rustc (another engineer's build on the same CPU) is not the workload.
        assert!(summary.contains("1000 samples on the recorded CPUs; 800 (80.0 %)"), "{summary}");
        assert!(summary.contains("loadgen 70.0 %, rustc 20.0 %, ksoftirqd/1 10.0 %"), "{summary}");
        let veth = summary.lines().find(|l| l.contains("  veth ")).unwrap();
        assert!(veth.starts_with("  37.5 %") && veth.ends_with("(veth_xmit)"), "{veth}");
        let ebpf = summary.lines().find(|l| l.contains("eBPF programs")).unwrap();
        assert!(ebpf.starts_with("  25.0 %") && ebpf.ends_with("(bpf_prog_3b185187f1855c4c_from_endpoint)"), "{ebpf}");
        let top = summary.lines().find(|l| l.contains("[k]   loadgen      veth_xmit")).unwrap();
        assert!(top.starts_with("  37.5 %  [k]   loadgen      veth_xmit") && top.ends_with(" veth"), "{top}");
    }
}
