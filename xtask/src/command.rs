//! Printing and running external commands, with errors that name the command.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
// Shared with the sandbox, which shows its own commands the same way.
pub use bpfnet_tests::process::{announce, display, wait_bounded};

fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{}` failed ({status})", display(cmd))
    }
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().with_context(|| {
        format!("could not start `{}`: is it installed? (`cargo xtask setup` installs the tools)", display(cmd))
    })
}

/// Print and run `cmd` with inherited stdio; fail if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    announce(cmd);
    let status = spawn(cmd)?.wait().with_context(|| format!("waiting for `{}`", display(cmd)))?;
    check(cmd, status)
}

/// Print and run `cmd`, returning its stdout (stderr is inherited); fail if it does not exit 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    announce(cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`: is it installed?", display(cmd)))?;
    check(cmd, out.status)?;
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Like [`run`], but kills the command if it has not exited within `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<()> {
    announce(cmd);
    let mut child = spawn(cmd)?;
    let status = wait_bounded(&mut child, limit).with_context(|| display(cmd))?;
    check(cmd, status)
}

/// Lines of a log shown when its command failed.
const LOG_TAIL_LINES: usize = 30;

/// Print `cmd` and run it with its stdout and stderr appended to `log` (after a `$ cmd` line),
/// so a chatty tool (apt-get, cargo install) does not bury what matters; kill it after
/// `limit`. If it fails, print the log's last lines and path before returning the error.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> Result<()> {
    announce(cmd);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the log {}", log.display()))?;
    writeln!(file, "\n$ {}", display(cmd)).with_context(|| format!("writing to the log {}", log.display()))?;
    let stderr = file.try_clone().with_context(|| format!("duplicating the log's descriptor ({})", log.display()))?;
    let mut child = spawn(cmd.stdin(Stdio::null()).stdout(file).stderr(stderr))?;
    let outcome = wait_bounded(&mut child, limit).with_context(|| display(cmd)).and_then(|status| check(cmd, status));
    if outcome.is_err() {
        print_log_tail(log);
    }
    outcome.with_context(|| format!("its output is in {}", log.display()))
}

fn print_log_tail(log: &Path) {
    match fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            eprintln!("--- the last lines of {} ---", log.display());
            eprintln!("{}", tail(&text, LOG_TAIL_LINES));
            eprintln!("--- end of {} ---", log.display());
        }
        Err(err) => eprintln!("(could not read the log {}: {err})", log.display()),
    }
}

/// The last `lines` lines of `text` (all of it when it has fewer).
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Like [`output`], but kills the command if it has not exited within `limit`.
pub fn output_bounded(cmd: &mut Command, limit: Duration) -> Result<String> {
    announce(cmd);
    let mut child = spawn(cmd.stdout(Stdio::piped()))?;
    // Read on another thread so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut text = Vec::new();
        stdout.read_to_end(&mut text).map(|_| text)
    });
    let status = wait_bounded(&mut child, limit).with_context(|| display(cmd))?;
    let text = reader
        .join()
        .expect("stdout reader thread panicked")
        .with_context(|| format!("reading the output of `{}`", display(cmd)))?;
    check(cmd, status)?;
    String::from_utf8(text).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Like [`run_bounded`], and how long the command took from its start to its exit (process
/// start included). Waits on a pidfd: [`wait_bounded`] polls every 20 ms, far too coarse for
/// what takes a few milliseconds.
pub fn run_timed(cmd: &mut Command, limit: Duration) -> Result<Duration> {
    announce(cmd);
    let started = Instant::now();
    let mut child = spawn(cmd)?;
    let status = wait_exactly(&mut child, limit).with_context(|| display(cmd))?;
    let took = started.elapsed();
    check(cmd, status)?;
    Ok(took)
}

/// Wait for `child` to exit, woken by the kernel when it does; kill and reap it after `limit`.
fn wait_exactly(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    // SAFETY: pidfd_open takes a pid and flags; the child is not reaped yet, so its pid is
    // still ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        let _killed = child.kill();
        let _reaped = child.wait();
        return Err(err).context("pidfd_open (Linux 5.3 or later is needed)");
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready > 0 {
            return child.wait().context("waiting for a child process");
        }
        let interrupted = ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if ready < 0 && !interrupted {
            let err = std::io::Error::last_os_error();
            let _killed = child.kill();
            let _reaped = child.wait();
            return Err(err).context("poll on a pidfd");
        }
        if Instant::now() >= deadline {
            let _killed = child.kill();
            let _reaped = child.wait();
            bail!("timed out after {limit:?} and was killed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 3), "a\nb\nc");
        assert_eq!(tail("a\nb", 10), "a\nb");
        assert_eq!(tail("a\nb", 0), "");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn a_logged_run_keeps_the_output_in_the_log() {
        let log = std::env::temp_dir().join(format!("xtask-run-logged-{}.log", std::process::id()));
        let _ = fs::remove_file(&log);
        let limit = Duration::from_secs(5);
        run_logged(Command::new("sh").args(["-c", "echo out; echo err >&2"]), &log, limit).unwrap();
        let err = run_logged(Command::new("sh").args(["-c", "echo failing; exit 3"]), &log, limit).unwrap_err();
        let text = fs::read_to_string(&log).unwrap();
        fs::remove_file(&log).unwrap();
        assert!(text.contains("$ sh -c 'echo out; echo err >&2'\nout\nerr\n"), "{text}");
        assert!(text.contains("failing"), "{text}");
        let err = format!("{err:#}");
        assert!(err.contains(&log.display().to_string()) && err.contains("failed"), "{err}");
    }

    #[test]
    fn timed_run_is_exact_and_bounded() {
        let took = run_timed(Command::new("sleep").arg("0.003"), Duration::from_secs(5)).unwrap();
        assert!(took >= Duration::from_millis(3) && took < Duration::from_secs(1), "{took:?}");
        let started = Instant::now();
        assert!(run_timed(Command::new("sleep").arg("5"), Duration::from_millis(100)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(run_timed(&mut Command::new("false"), Duration::from_secs(5)).is_err());
    }
}
