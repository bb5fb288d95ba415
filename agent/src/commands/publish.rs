use serde_json::Value;

/// `bpfnet publish|unpublish NAME SPEC...`: prints the container's ports afterwards.
pub fn print(answer: &Value) {
    let ports = answer["ports"].as_array().map_or(0, Vec::len);
    println!("{}: {ports} port(s) published", answer["name"].as_str().unwrap_or_default());
}
