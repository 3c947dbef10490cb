//! `tributary-collector`: the central service. So far it provides the store
//! (see the library); ingest, the API, the dashboard and the demo follow.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("tributary-collector: only the store is built so far; see the Collector issue")
}
