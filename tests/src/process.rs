//! Child processes as the sandbox and `cargo xtask` show and wait for them: a command as the
//! shell line that runs it, and a wait that cannot hang.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Ok when a cleanup's every step worked; else one error listing what each failed step said.
pub fn all_done(what: &str, errors: Vec<anyhow::Error>) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = errors.iter().map(|err| format!("  - {err:#}")).collect();
    bail!("{what} found problems:\n{}", list.join("\n"))
}

/// The command as a shell line: `VAR=value program args`, quoted where needed.
/// PATH is left out: it is only ever extended, and would drown the line.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(&value.to_string_lossy())));
        }
    }
    words.push(quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^~".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Print the command as `$ cmd args`, before it runs.
pub fn announce(cmd: &Command) {
    println!("$ {}", display(cmd));
}

/// Wait for `child` to exit; kill and reap it after `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // It may exit between try_wait and kill: then kill fails and wait reaps it.
            let _killed = child.kill();
            let _reaped = child.wait();
            bail!("timed out after {limit:?} and was killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin closed), waits at most `limit`, and returns its stdout; fails with its
/// stderr unless it exited 0. Both pipes are read on threads of their own, so a chatty command
/// cannot block on a full pipe.
pub fn output_bounded(cmd: &mut Command, limit: Duration) -> Result<String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", display(cmd)))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = wait_bounded(&mut child, limit).with_context(|| format!("`{}`", display(cmd)))?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    if !status.success() {
        bail!("`{}` failed ({status}): {}{}", display(cmd), stderr.trim(), stdout.trim());
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "a-b", "sh", "-c", "echo 'hi' there"])
            .env("BPFNET_BIN", "/t/bpfnet")
            .env("PATH", "/x");
        assert_eq!(display(&cmd), r"BPFNET_BIN=/t/bpfnet ip netns exec a-b sh -c 'echo '\''hi'\'' there'");
    }

    #[test]
    fn bounded_wait_kills_a_hanging_command() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let started = Instant::now();
        assert!(wait_bounded(&mut child, Duration::from_millis(100)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
