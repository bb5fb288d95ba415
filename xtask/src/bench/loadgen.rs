//! `xtask loadgen ...` (hidden): the benchmark's own traffic tools, run by the bench inside
//! the sandbox's namespaces as `ip netns exec NS taskset -c CPU <xtask> loadgen ...`.
//! netperf is not packaged here, and our own tools print exactly the JSON the bench parses.
//!
//! Every tool is bounded in time. A server prints one line `{"listening":"IP:PORT"}` as soon
//! as its socket is bound (the bench waits for it), and exits on its own: after a quiet
//! period once traffic has come and gone, or at `--max-secs`. Each tool ends by printing one
//! JSON object (see [`UdpFloodReport`] and the others) on stdout.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::stats::percentile;

/// A "64-byte packet" is a 64-byte Ethernet frame counted with its FCS:
/// 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 18 (payload) + 4 (FCS) = 64.
pub const UDP_PAYLOAD_64B_FRAME: usize = 18;
/// IPv6's header is 20 bytes longer than IPv4's: 14 + 40 + 8 + 0 + 4 = 66 is the smallest
/// frame of a UDP datagram over IPv6, so its "64-byte" rows send empty datagrams (66-byte
/// frames: the same work per packet as IPv4's, whose 64 are padded, with 2 bytes more).
pub const UDP_PAYLOAD_64B_FRAME_V6: usize = 0;
/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;
/// RR transactions dropped at the start (connection warm-up, first wake-ups).
const RR_WARMUP: usize = 100;
/// At most this many latency samples are kept (bounds memory, ~80 MB).
const MAX_SAMPLES: usize = 20_000_000;

#[derive(clap::Subcommand, Debug)]
pub enum LoadgenCommand {
    /// Send UDP datagrams to --to as fast as possible (sendmmsg) for --secs seconds.
    UdpFlood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
        /// UDP payload bytes; 18 makes 64-byte Ethernet frames (with FCS).
        #[arg(long, default_value_t = UDP_PAYLOAD_64B_FRAME)]
        payload: usize,
    },
    /// Count the UDP datagrams received on --bind; report the rate between the first and
    /// the last one. Ends --idle-ms after the last datagram, or at --max-secs.
    UdpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        max_secs: f64,
        #[arg(long, default_value_t = 300)]
        idle_ms: u64,
    },
    /// Echo server for tcp-rr and tcp-crr: serves one connection at a time (the clients are
    /// sequential), echoing what it reads. Ends --idle-ms after the last connection closed,
    /// or at --max-secs.
    TcpServer {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        max_secs: f64,
        #[arg(long, default_value_t = 300)]
        idle_ms: u64,
    },
    /// 1-byte request/response over one TCP connection (TCP_NODELAY) for --secs seconds.
    TcpRr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// A new TCP connection per 1-byte transaction (like netperf TCP_CRR) for --secs seconds.
    /// The client closes with RST (SO_LINGER 0) so that no TIME_WAIT piles up.
    TcpCrr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Listening {
    pub listening: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct UdpFloodReport {
    pub sent: u64,
    /// sendmmsg calls that failed with ENOBUFS, EAGAIN or ECONNREFUSED (and were retried).
    pub send_errors: u64,
    pub secs: f64,
    pub udp_payload_bytes: usize,
    /// CPU time all CPUs spent busy (not idle or waiting for I/O) while this flood sent,
    /// from /proc/stat: what the packets cost the whole machine, sender, datapath and sink.
    pub busy_cpu_secs: f64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct UdpSinkReport {
    pub received: u64,
    /// Where the first datagram came from, as the sink saw it (after any translation): the
    /// bench checks that a masquerade row was masqueraded.
    #[serde(default)]
    pub first_from: Option<String>,
    /// From the first datagram received to the last.
    pub secs: f64,
    /// Datagrams received per second (those after the first batch, over `secs`).
    pub pps: f64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TcpServerReport {
    pub connections: u64,
    pub bytes: u64,
}

/// tcp-rr and tcp-crr: transactions (or connections) and their latency.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TransactionReport {
    pub transactions: u64,
    pub errors: u64,
    pub secs: f64,
    pub per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

pub fn run(command: LoadgenCommand) -> Result<()> {
    match command {
        LoadgenCommand::UdpFlood { to, secs, payload } => print(&udp_flood(to, secs, payload)?),
        LoadgenCommand::UdpSink { bind, max_secs, idle_ms } => print(&udp_sink(bind, max_secs, idle_ms)?),
        LoadgenCommand::TcpServer { bind, max_secs, idle_ms } => print(&tcp_server(bind, max_secs, idle_ms)?),
        LoadgenCommand::TcpRr { to, secs } => print(&tcp_rr(to, secs)?),
        LoadgenCommand::TcpCrr { to, secs } => print(&tcp_crr(to, secs)?),
    }
}

fn print<T: Serialize>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn seconds(secs: f64, what: &str) -> Result<Duration> {
    if !(secs > 0.0 && secs <= 3600.0) {
        bail!("{what} must be between 0 and 3600 seconds, not {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_timeval_option(fd: i32, option: i32, limit: Duration) -> Result<()> {
    let tv =
        libc::timeval { tv_sec: limit.as_secs() as libc::time_t, tv_usec: limit.subsec_micros() as libc::suseconds_t };
    // SAFETY: a valid fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt(SO_RCVTIMEO)");
    }
    Ok(())
}

fn set_int_option(fd: i32, option: i32, value: i32) -> Result<()> {
    // SAFETY: a valid fd and an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

/// Close with RST instead of FIN: no TIME_WAIT on either side.
fn set_linger_zero(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a linger of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
    }
    Ok(())
}

fn announce_listening(addr: SocketAddr) -> Result<()> {
    print(&Listening { listening: addr.to_string() })
}

fn udp_flood(to: SocketAddr, secs: f64, payload_len: usize) -> Result<UdpFloodReport> {
    let duration = seconds(secs, "--secs")?;
    let any = match to {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(any).context("binding a UDP socket")?;
    socket.connect(to).with_context(|| format!("connecting the UDP socket to {to}"))?;
    let payload = vec![0x5au8; payload_len];
    // Every message of the batch points at the same payload.
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    for msg in &mut msgs {
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let fd = socket.as_raw_fd();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let cpu_before = CpuTime::now()?;
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline {
        // SAFETY: msgs holds BATCH initialised headers whose iovec outlives the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n >= 0 {
            sent += n as u64;
            continue;
        }
        match errno() {
            // A full qdisc/socket buffer, or an ICMP port unreachable reported on a connected
            // socket: count it and go on sending.
            libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR => send_errors += 1,
            _ => return Err(io::Error::last_os_error()).with_context(|| format!("sendmmsg to {to}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let busy_cpu_secs = CpuTime::now()?.busy_secs_since(&cpu_before);
    Ok(UdpFloodReport { sent, send_errors, secs, udp_payload_bytes: payload_len, busy_cpu_secs })
}

/// The `cpu` line of /proc/stat (all CPUs), in clock ticks (USER_HZ). Its tick sampling
/// (CONFIG_HZ) and USER_HZ units make it exact to about 1% over two CPUs and a second.
/// Chosen over `perf stat -a -e cpu-clock`, which counts idle time too (2 s per second on 2
/// CPUs whatever runs); hardware cycles are not available on the VMs this runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTime {
    busy_ticks: u64,
}

impl CpuTime {
    fn now() -> Result<CpuTime> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        CpuTime::parse(&text)
    }

    /// user nice system idle iowait irq softirq steal [guest guest_nice] (proc(5)); guest
    /// time is already in user. Busy: everything but idle and iowait.
    fn parse(stat: &str) -> Result<CpuTime> {
        let line = stat.lines().find(|l| l.starts_with("cpu ")).context("/proc/stat has no `cpu` line")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat's `cpu` line is not numbers: {line:?}"))?;
        if fields.len() < 8 {
            bail!("/proc/stat's `cpu` line has {} fields, not at least 8: {line:?}", fields.len());
        }
        let busy_ticks = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
        Ok(CpuTime { busy_ticks })
    }

    fn busy_secs_since(&self, before: &CpuTime) -> f64 {
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy_ticks.saturating_sub(before.busy_ticks) as f64 / hz
    }
}

fn udp_sink(bind: SocketAddr, max_secs: f64, idle_ms: u64) -> Result<UdpSinkReport> {
    let limit = seconds(max_secs, "--max-secs")?;
    let idle = Duration::from_millis(idle_ms);
    let socket = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    let fd = socket.as_raw_fd();
    // As large as net.core.rmem_max allows: the sink should not be what drops.
    set_int_option(fd, libc::SO_RCVBUF, 8 << 20)?;
    announce_listening(bind)?;

    let mut buffers = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        buffers.iter_mut().map(|buf| libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }).collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }

    let deadline = Instant::now() + limit;
    let mut received = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = Instant::now();
    // The first datagram alone, for its sender's address; then batches, whose senders are
    // not looked at.
    socket.set_nonblocking(true).context("making the UDP socket non-blocking")?;
    let (mut first_from, mut one) = (None, [0u8; 2048]);
    while first_from.is_none() && Instant::now() < deadline {
        match socket.recv_from(&mut one) {
            Ok((_, from)) => {
                let now = Instant::now();
                (received, first, last, first_from) = (1, Some((now, 1)), now, Some(from.to_string()));
            }
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                std::hint::spin_loop();
            }
            Err(err) => return Err(err).context("recvfrom"),
        }
    }
    while Instant::now() < deadline {
        // MSG_DONTWAIT: never sleep. A veth runs the whole receive path on the sender's CPU,
        // up to waking this process; a sink that never waits spares it that wake-up (a
        // cross-CPU interrupt, costly in a VM), so the sender is not slowed by the sink.
        // SAFETY: msgs holds BATCH headers whose iovecs point into live buffers.
        let n =
            unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n > 0 {
            let now = Instant::now();
            received += n as u64;
            first.get_or_insert((now, n as u64));
            last = now;
            continue;
        }
        match errno() {
            libc::EAGAIN | libc::EINTR => {
                if first.is_some() && last.elapsed() >= idle {
                    break;
                }
                std::hint::spin_loop();
            }
            _ => return Err(io::Error::last_os_error()).context("recvmmsg"),
        }
    }
    let (secs, pps) = match first {
        Some((at, first_batch)) if last > at => {
            let secs = (last - at).as_secs_f64();
            (secs, (received - first_batch) as f64 / secs)
        }
        _ => (0.0, 0.0),
    };
    Ok(UdpSinkReport { received, first_from, secs, pps })
}

fn tcp_server(bind: SocketAddr, max_secs: f64, idle_ms: u64) -> Result<TcpServerReport> {
    let limit = seconds(max_secs, "--max-secs")?;
    let idle = Duration::from_millis(idle_ms);
    let listener = TcpListener::bind(bind).with_context(|| format!("listening on TCP {bind}"))?;
    // accept() honours SO_RCVTIMEO: the loop gets to look at the clock.
    set_timeval_option(listener.as_raw_fd(), libc::SO_RCVTIMEO, Duration::from_millis(100))?;
    announce_listening(bind)?;

    let deadline = Instant::now() + limit;
    let (mut connections, mut bytes) = (0u64, 0u64);
    let mut last_close: Option<Instant> = None;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                connections += 1;
                bytes += echo(stream, deadline);
                last_close = Some(Instant::now());
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if last_close.is_some_and(|at| at.elapsed() >= idle) {
                    break;
                }
            }
            // A connection reset before accept() took it: the next one will do.
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(err) => return Err(err).context("accept"),
        }
    }
    Ok(TcpServerReport { connections, bytes })
}

/// Echo until the peer closes (or resets), or until `deadline`; the bytes echoed.
fn echo(mut stream: TcpStream, deadline: Instant) -> u64 {
    let _nodelay = stream.set_nodelay(true);
    let _timeout = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 256];
    let mut bytes = 0;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
                bytes += n as u64;
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            // Reset by a tcp-crr client: the transaction is complete.
            Err(_) => break,
        }
    }
    bytes
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// One 1-byte request and its 1-byte response.
fn transact(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(&[1])?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)
}

fn tcp_rr(to: SocketAddr, secs: f64) -> Result<TransactionReport> {
    let duration = seconds(secs, "--secs")?;
    let mut stream = connect(to).with_context(|| format!("connecting to {to}"))?;
    for _ in 0..RR_WARMUP {
        transact(&mut stream).with_context(|| format!("warm-up transaction with {to}"))?;
    }
    let mut latencies_ns: Vec<u32> = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline && latencies_ns.len() < MAX_SAMPLES {
        let t0 = Instant::now();
        transact(&mut stream).with_context(|| format!("transaction with {to}"))?;
        latencies_ns.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
    }
    let secs = start.elapsed().as_secs_f64();
    transaction_report(latencies_ns, 0, secs)
}

fn tcp_crr(to: SocketAddr, secs: f64) -> Result<TransactionReport> {
    let duration = seconds(secs, "--secs")?;
    let mut latencies_ns: Vec<u32> = Vec::with_capacity(1 << 18);
    let mut errors = 0u64;
    let mut first_error: Option<io::Error> = None;
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline && latencies_ns.len() < MAX_SAMPLES {
        let t0 = Instant::now();
        let outcome = connect(to).and_then(|mut stream| {
            transact(&mut stream)?;
            set_linger_zero(&stream).map_err(io::Error::other)?;
            Ok(())
        });
        match outcome {
            Ok(()) => latencies_ns.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32),
            Err(err) => {
                errors += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if latencies_ns.is_empty() {
        match first_error {
            Some(err) => return Err(err).with_context(|| format!("no transaction with {to} succeeded")),
            None => bail!("no transaction with {to} in {secs:.1} s"),
        }
    }
    transaction_report(latencies_ns, errors, secs)
}

fn transaction_report(mut latencies_ns: Vec<u32>, errors: u64, secs: f64) -> Result<TransactionReport> {
    if latencies_ns.is_empty() {
        bail!("no transactions completed in {secs:.1} s");
    }
    latencies_ns.sort_unstable();
    let us = |p: f64| percentile(&latencies_ns, p).map_or(0.0, |ns| ns as f64 / 1000.0);
    let total: u64 = latencies_ns.iter().map(|&ns| ns as u64).sum();
    Ok(TransactionReport {
        transactions: latencies_ns.len() as u64,
        errors,
        secs,
        per_sec: latencies_ns.len() as f64 / secs,
        p50_us: us(50.0),
        p90_us: us(90.0),
        p99_us: us(99.0),
        mean_us: total as f64 / latencies_ns.len() as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use std::thread;

    use std::net::IpAddr;

    use super::*;

    #[test]
    fn a_64_byte_frame_carries_18_bytes_of_udp_payload() {
        assert_eq!(14 + 20 + 8 + UDP_PAYLOAD_64B_FRAME + 4, 64);
        // IPv6's smallest: an empty datagram.
        assert_eq!(14 + 40 + 8 + UDP_PAYLOAD_64B_FRAME_V6 + 4, 66);
    }

    #[test]
    fn transaction_report_percentiles() {
        let report = transaction_report((1..=100).map(|us| us * 1000).collect(), 2, 2.0).unwrap();
        assert_eq!(report.transactions, 100);
        assert_eq!(report.errors, 2);
        assert_eq!(report.per_sec, 50.0);
        assert_eq!((report.p50_us, report.p99_us), (50.0, 99.0));
        assert_eq!(report.mean_us, 50.5);
        assert!(transaction_report(Vec::new(), 0, 1.0).is_err());
    }

    /// Run `test` on a throwaway thread in a new network namespace with lo up (so the test
    /// sends nothing in the namespace `cargo test` runs in). Threads it spawns inherit the
    /// namespace. Skipped without the privilege to unshare.
    fn in_private_netns(test: impl FnOnce() + Send + 'static) {
        let outcome = thread::spawn(move || {
            // SAFETY: unshare affects only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipped: unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
                return;
            }
            loopback_up();
            test();
        })
        .join();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    fn loopback_up() {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("a socket for the ioctl");
        // SAFETY: ifreq is plain data; the name fits; the fd is valid.
        unsafe {
            let mut req: libc::ifreq = mem::zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            assert_eq!(libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req), 0);
        }
    }

    /// The tools against each other on loopback.
    #[test]
    fn rr_and_crr_against_the_server() {
        in_private_netns(rr_and_crr);
    }

    fn rr_and_crr() {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let server = thread::spawn(move || tcp_server(addr, 10.0, 300).unwrap());
        // The server binds right away; retry the first connect for a moment.
        let mut rr = None;
        for _ in 0..50 {
            match tcp_rr(addr, 0.2) {
                Ok(report) => {
                    rr = Some(report);
                    break;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        let rr = rr.expect("tcp-rr never reached the server");
        assert!(rr.transactions > 0 && rr.p50_us > 0.0 && rr.p99_us >= rr.p50_us);
        let crr = tcp_crr(addr, 0.2).unwrap();
        assert!(crr.transactions > 0, "{crr:?}");
        let served = server.join().unwrap();
        assert!(served.connections > crr.transactions);
    }

    #[test]
    fn flood_into_sink() {
        in_private_netns(|| flood_and_sink(IpAddr::V4(Ipv4Addr::LOCALHOST), UDP_PAYLOAD_64B_FRAME));
    }

    #[test]
    fn flood_into_sink_over_ipv6() {
        in_private_netns(|| flood_and_sink(IpAddr::V6(Ipv6Addr::LOCALHOST), UDP_PAYLOAD_64B_FRAME_V6));
    }

    fn flood_and_sink(ip: IpAddr, payload: usize) {
        let port = {
            let probe = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let addr = SocketAddr::new(ip, port);
        let sink = thread::spawn(move || udp_sink(addr, 10.0, 200).unwrap());
        thread::sleep(Duration::from_millis(100));
        let flood = udp_flood(addr, 0.2, payload).unwrap();
        let sunk = sink.join().unwrap();
        assert!(flood.sent > 0);
        assert!(sunk.received > 0 && sunk.received <= flood.sent, "{sunk:?} {flood:?}");
        assert!(sunk.pps > 0.0);
        let from: SocketAddr = sunk.first_from.as_deref().expect("the first sender").parse().unwrap();
        assert_eq!(from.ip(), ip);
    }

    #[test]
    fn busy_cpu_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 7 1 4 3 50 0\ncpu0 50 1 15 2500 3 0 2 1 25 0\nintr 1 2\n";
        assert_eq!(CpuTime::parse(stat).unwrap(), CpuTime { busy_ticks: 100 + 2 + 30 + 1 + 4 + 3 });
        assert!(CpuTime::parse("cpu0 1 2 3 4 5 6 7 8\n").is_err());
        assert!(CpuTime::parse("cpu  1 2 3\n").is_err());
        assert!(CpuTime::now().unwrap().busy_ticks > 0);
    }

    #[test]
    fn durations_are_bounded() {
        assert!(seconds(0.0, "--secs").is_err());
        assert!(seconds(f64::NAN, "--secs").is_err());
        assert!(seconds(4000.0, "--secs").is_err());
        assert_eq!(seconds(1.5, "--secs").unwrap(), Duration::from_millis(1500));
    }
}
