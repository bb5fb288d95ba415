use crate::api::PortChange;

/// `bpfnet publish|unpublish NAME SPEC...`: what changed, and how many ports the container
/// publishes afterwards.
pub fn print(answer: &PortChange) {
    for (what, ports) in [("published", &answer.published), ("unpublished", &answer.unpublished)] {
        if !ports.is_empty() {
            println!("{}: {} port(s) {what}, {} published in all", answer.name, ports.len(), answer.port_count);
        }
    }
}
