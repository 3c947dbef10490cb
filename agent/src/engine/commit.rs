//! The group commit: assembling one [`Commit`] from the windower's flush and
//! the registry's and the devices' changes, running it, and only then
//! acknowledging the input it made durable (link Acks, MQTT PUBACKs through
//! the `done` signals) and counting what it did.
//!
//! A commit that fails comes back whole with its error: its changes are no
//! longer in the windower, so the engine retries it as it is (see
//! `stall`); nothing it held is acknowledged until it succeeded.

use std::time::Instant;

use tributary_runtime::now_ms;

use super::state::State;
use crate::store::{Commit, Store, StoreError};

/// A commit that failed, with its error.
pub(crate) type Failed = (Box<Commit>, StoreError);

/// Commits everything pending in `st` to `store` (a no-op when nothing
/// is), then acknowledges it; returns how many partials it emitted.
pub(crate) fn commit(st: &mut State, store: &mut Store) -> Result<u64, Failed> {
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
    match run(st, store, &c) {
        Ok(emitted) => {
            st.pending.acknowledge();
            Ok(emitted)
        }
        Err(e) => Err((Box::new(c), e)),
    }
}

/// Runs the commit `c` and counts what it did (acknowledging nothing);
/// returns how many partials it emitted.
pub(crate) fn run(st: &State, store: &mut Store, c: &Commit) -> Result<u64, StoreError> {
    let started = Instant::now();
    let revisions = c.flush.emitted.iter().filter(|e| e.revision).count() as u64;
    let emitted = c.flush.emitted.len() as u64;
    let out = store.commit(c)?;
    let m = &st.metrics;
    m.record_commit(started.elapsed());
    m.partials_emitted.inc_by(emitted - revisions);
    m.revisions_emitted.inc_by(revisions);
    m.partials_coarsened.inc_by(out.coarsened);
    m.readings_dropped.inc_by(out.dropped_readings);
    m.set_outbox(store.row_bytes(), store.batch_bytes());
    Ok(emitted)
}
