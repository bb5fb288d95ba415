//! Printing and running external commands, with errors that name the command.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The command as a shell line: `VAR=value program args`, quoted where needed.
/// PATH is left out: it is only ever extended, and would drown the line.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    words.push(quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^~".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn announce(cmd: &Command) {
    println!("$ {}", display(cmd));
}

fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{}` failed ({status})", display(cmd))
    }
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().with_context(|| {
        format!(
            "could not start `{}`: is it installed? (`cargo xtask setup` installs the tools)",
            display(cmd)
        )
    })
}

/// Print and run `cmd` with inherited stdio; fail if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    announce(cmd);
    let status = spawn(cmd)?
        .wait()
        .with_context(|| format!("waiting for `{}`", display(cmd)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "a-b", "sh", "-c", "echo 'hi' there"])
            .env("BPFNET_BIN", "/t/bpfnet")
            .env("PATH", "/x");
        assert_eq!(
            display(&cmd),
            r"BPFNET_BIN=/t/bpfnet ip netns exec a-b sh -c 'echo '\''hi'\'' there'"
        );
    }

    #[test]
    fn bounded_run_kills_a_hanging_command() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let started = Instant::now();
        assert!(wait_bounded(&mut child, Duration::from_millis(100)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
