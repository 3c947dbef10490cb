//! `tributary-collector`: the central service (see the Collector issue; not built yet).
fn main() {}
