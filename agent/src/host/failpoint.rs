//! Crash points for tests: `BPFNET_FAILPOINT=NAME` makes the agent abort (as a SIGKILL would
//! leave it) when it reaches the point NAME, so the tests can check what a restarted agent does
//! with an operation that was cut off. Unset, a failpoint costs one environment lookup.
pub fn hit(name: &str) {
    if std::env::var("BPFNET_FAILPOINT").is_ok_and(|wanted| wanted == name) {
        eprintln!("bpfnet: failpoint {name} reached: aborting");
        std::process::abort();
    }
}
