use serde_json::Value;

/// `bpfnet publish|unpublish NAME SPEC...`: what changed, and how many ports the container
/// publishes afterwards.
pub fn print(answer: &Value) {
    let name = answer["name"].as_str().unwrap_or_default();
    let count = answer["port_count"].as_u64().unwrap_or_default();
    for what in ["published", "unpublished"] {
        if let Some(ports) = answer[what].as_array() {
            println!("{name}: {} port(s) {what}, {count} published in all", ports.len());
        }
    }
}
