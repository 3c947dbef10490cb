//! Criterion benchmarks of tributary-core (being written).
fn main() {}
