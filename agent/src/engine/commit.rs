//! The group commit: assembling one [`Commit`] from the windower's flush and
//! the registry's and the devices' changes, running it, and only then
//! acknowledging the input it made durable (link Acks, MQTT PUBACKs through
//! the `done` signals) and counting what it did.
//!
//! If the store fails the engine stops with the error (see
//! [`crate::engine`]): nothing that commit held was acknowledged.

use std::time::Instant;

use tributary_runtime::now_ms;

use super::state::State;
use crate::metrics::Metrics;
use crate::store::{Commit, Store, StoreError};

/// Commits everything pending in `st` to `store` (a no-op when nothing
/// is), then acknowledges it; returns how many partials it emitted.
pub(crate) fn commit(st: &mut State, store: &mut Store) -> Result<u64, StoreError> {
    let started = Instant::now();
    let flush = st.win.flush(now_ms());
    let nothing = flush.emitted.is_empty()
        && flush.checkpoints.is_empty()
        && flush.deleted.is_empty()
        && st.pending.since.is_none();
    if nothing {
        return Ok(0);
    }
    let mut c = Commit {
        flush,
        ..Commit::default()
    };
    st.registry.drain_into(&st.win, &mut c);
    st.devices.drain_into(&mut c);
    let revisions = c.flush.emitted.iter().filter(|e| e.revision).count() as u64;
    let emitted = c.flush.emitted.len() as u64;
    let m = &st.metrics;
    let out = checked(m, store.commit(&c))?;
    m.store_ok.set(1);
    m.record_commit(started.elapsed());
    m.partials_emitted.inc_by(emitted - revisions);
    m.revisions_emitted.inc_by(revisions);
    m.partials_coarsened.inc_by(out.coarsened);
    m.readings_dropped.inc_by(out.dropped_readings);
    m.outbox_bytes.set(store.outbox_bytes());
    st.pending.acknowledge();
    Ok(emitted)
}

/// Passes a store result on, marking the store failed (and saying so) on
/// an error.
pub(crate) fn checked<T>(m: &Metrics, r: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(e) = &r {
        m.store_ok.set(0);
        tracing::error!(error = %e, "store operation failed; stopping so a restart resumes from the last commit");
    }
    r
}
