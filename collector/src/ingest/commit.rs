//! Applying a group of batches to the store, with batch faults isolated.
//!
//! # Batch faults
//! An error of the batches rather than of the database
//! ([`StoreError::is_batch_fault`]: a partial that cannot merge into its
//! stored window, a panic in the store's code, corrupt stored data) comes
//! back however often the group is applied, and must not hold up the other
//! batches, nor ingest for good. The group is then applied batch by batch,
//! and a batch that still fails alone is refused whole and recorded as
//! seen ([`Ingest::record_refused`]: counted per agent incarnation and
//! reason, durably, confirmed so the agent stops resending it, a duplicate
//! if it comes again):
//! - at once if it cannot merge (its data conflicts with the stored
//!   window: it can never apply);
//! - if the store panicked on it or met corrupt data, only when another
//!   batch of the same round was newly applied: the store demonstrably
//!   works on other data. Otherwise the group is kept and committed again
//!   with a backoff, as after a failing database, with what arrives
//!   meanwhile; so a lone bad batch waits for the next batch that arrives,
//!   and a fault that hits every batch (a bug in a new release, a corrupt
//!   database) stalls ingest visibly instead of refusing everything.

use std::future::Future;

use tributary_core::batch::Batch;

use crate::store::{Applied, Ingest, NewIncarnation, Refusals, StoreError, WholeBatch};

use super::group::Outcome;

/// Applies `batches` in one transaction; answers the outcome of each and
/// appends the agent incarnations seen for the first time to
/// `incarnations`, storing with each new batch what the checks took out of
/// it (`refused`, in the same transaction). A batch fault (see the module
/// note) is isolated by [`one_by_one`]; any other error fails the whole
/// group, to be applied again (batches applied one by one before it are
/// then duplicates).
pub(super) async fn apply<S: Ingest>(
    store: &S,
    batches: &[Batch],
    refused: &[Refusals],
    incarnations: &mut Vec<NewIncarnation>,
) -> Result<Vec<Outcome>, StoreError> {
    match unpanicked(store.apply_refused(batches, refused)).await {
        Ok(mut r) => {
            incarnations.append(&mut r.incarnations);
            r.applied.iter().map(|a| outcome(Some(a))).collect()
        }
        Err(e) if e.is_batch_fault() => {
            if batches.len() > 1 {
                tracing::warn!(error = %e, batches = batches.len(),
                    "a group failed on its batches; applying them one by one");
            }
            one_by_one(store, batches, refused, incarnations).await
        }
        Err(e) => Err(e),
    }
}

/// What became of a batch the store answered for.
fn outcome(a: Option<&Applied>) -> Result<Outcome, StoreError> {
    match a {
        Some(Applied::New) => Ok(Outcome::New),
        Some(Applied::Duplicate) => Ok(Outcome::Duplicate),
        None => Err(StoreError::Task("no outcome for a batch".into())),
    }
}

/// The group after a batch fault: each batch applied alone, and those that
/// still fail refused whole and recorded (see the module note), or the
/// first such error when no batch was newly applied.
async fn one_by_one<S: Ingest>(
    store: &S,
    batches: &[Batch],
    refused: &[Refusals],
    incarnations: &mut Vec<NewIncarnation>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut each: Vec<Option<Outcome>> = Vec::with_capacity(batches.len());
    let mut faults = Vec::new();
    let mut proven = false;
    for (i, b) in batches.iter().enumerate() {
        let r = refused.get(i..=i).unwrap_or_default();
        match unpanicked(store.apply_refused(std::slice::from_ref(b), r)).await {
            Ok(mut r) => {
                incarnations.append(&mut r.incarnations);
                proven |= r.applied.contains(&Applied::New);
                each.push(Some(outcome(r.applied.first())?));
            }
            Err(e) if e.is_batch_fault() => {
                each.push(None);
                faults.push((i, e));
            }
            Err(e) => return Err(e),
        }
    }
    let why = |e: &StoreError| match e {
        StoreError::Merge { .. } => WholeBatch::Unmergeable,
        _ => WholeBatch::StoreFailed,
    };
    if !proven {
        if let Some(i) = faults
            .iter()
            .position(|(_, e)| why(e) == WholeBatch::StoreFailed)
        {
            return Err(faults.swap_remove(i).1);
        }
    }
    for (i, error) in faults {
        let why = why(&error);
        let b = &batches[i];
        let mut r = refused.get(i).copied().unwrap_or_default();
        r.refuse_whole(why, b);
        let mut rec =
            unpanicked(store.record_refused(std::slice::from_ref(b), std::slice::from_ref(&r)))
                .await?;
        incarnations.append(&mut rec.incarnations);
        let recorded = outcome(rec.applied.first())?;
        each[i] = Some(match recorded {
            Outcome::New => Outcome::Refused(why),
            other => other,
        });
        // Confirmed so the agent stops resending what cannot apply; logged
        // and counted, never silent.
        let (agent, seq, partials) = (&b.agent, b.seq, b.partials.len());
        match why {
            WholeBatch::Unmergeable => tracing::warn!(agent, incarnation = %b.incarnation, seq,
                partials, error = %error, "batch refused: cannot merge into the stored window"),
            WholeBatch::StoreFailed => tracing::error!(agent, incarnation = %b.incarnation, seq,
                partials, error = %error,
                "batch refused: the store fails on it alone while other batches apply (a bug: please report it with this line)"),
        }
    }
    each.into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Task("no outcome for a batch".into())))
        .collect()
}

/// `f`'s answer, or [`StoreError::Panicked`] if it panicked (the stores
/// leave their state sound after a panic): a batch fault.
async fn unpanicked<T>(f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => std::task::Poll::Ready(Err(StoreError::Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into()),
            ))),
        }
    })
    .await
}
