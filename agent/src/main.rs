//! `tributary-agent`: the edge daemon (see the Agent issue; not built yet).
fn main() {}
