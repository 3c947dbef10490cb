//! Applying a group of batches to the store, with batch faults isolated.
//!
//! # Batch faults
//! An error of a batch rather than of the database
//! ([`StoreError::whole_batch`]: a partial that cannot merge into its
//! stored window, or the store's code panicking on it) comes back however
//! often the group is applied, and must not hold up the other batches, nor
//! ingest for good. The group is then applied batch by batch, and a batch
//! that still fails alone is refused whole and recorded as seen
//! ([`Ingest::record_refused`]: counted per agent incarnation and reason,
//! durably, confirmed so the agent stops resending it, a duplicate if it
//! comes again):
//! - at once if it cannot merge (its data conflicts with the stored
//!   window: it can never apply);
//! - if the store panicked on it, only when another batch of the same
//!   round applied alone — new, or a duplicate of one stored before: the
//!   store demonstrably works on other data. Otherwise the group is kept
//!   and committed again with a backoff, as after a failing database, with
//!   what arrives meanwhile: a lone bad batch waits for the next batch, and
//!   a fault that hits every batch (a bug in a new release) stalls ingest
//!   visibly instead of refusing everything. (Duplicates count: after a
//!   restart the broker's whole in-flight window may be redeliveries, and
//!   nothing new can arrive until they are acknowledged.)
//!
//! Recording the refusals is one transaction; if it fails, the group is
//! kept and committed again (nothing is confirmed that is not recorded; a
//! refusal is counted once, when its record commits). Any other error
//! fails the whole group, to be applied again.
//!
//! # Counted once, whatever applied it
//! A batch applied by an attempt that then failed — alone in the
//! batch-by-batch round, or in a part of the group that committed on its
//! own ([`StoreError::Partly`]: PostgreSQL's lanes) — is a duplicate when
//! the group is applied again. [`Progress`] keeps, across the attempts, the
//! batches such an attempt applied as new and the incarnations it saw
//! first, and the attempt that commits answers those batches as new: their
//! partials, readings and new incarnations are counted once, with the
//! group. A transaction whose `COMMIT` reply was lost never reaches here
//! as an error when the store could learn that it committed (PostgreSQL
//! asks the server: `store::postgres`'s `resolve`); only one whose outcome
//! stayed unknown is retried, and its batches then count as duplicates.

use std::collections::BTreeSet;
use std::future::Future;

use tributary_core::batch::Batch;
use tributary_core::Incarnation;

use super::group::Outcome;
use crate::store::{Applied, Ingest, NewIncarnation, Refusals, StoreError, WholeBatch};

/// What the attempts at committing a group applied before one failed,
/// kept until the group commits (see the module note).
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The agent incarnations seen for the first time.
    pub(super) incarnations: Vec<NewIncarnation>,
    /// The batches applied as new, by (agent, incarnation, sequence).
    applied: BTreeSet<(String, Incarnation, u64)>,
}

impl Progress {
    /// Takes in that `batch` was applied as new by an attempt that may
    /// still fail.
    fn applied(&mut self, batch: &Batch) {
        self.applied
            .insert((batch.agent.clone(), batch.incarnation, batch.seq));
    }

    /// Takes in what committed of `batches` before the store call failed
    /// with `error`; answers the error of the part that failed.
    fn failed(&mut self, batches: &[Batch], error: StoreError) -> StoreError {
        let (error, committed) = error.committed();
        if let Some(mut c) = committed {
            self.incarnations.append(&mut c.incarnations);
            for (b, a) in batches.iter().zip(&c.applied) {
                if *a == Some(Applied::New) {
                    self.applied(b);
                }
            }
        }
        error
    }

    /// The group `batches` committed with `outcomes`: a duplicate that an
    /// earlier attempt applied as new is new (its first copy in the group
    /// only), and nothing is kept for the next group but the incarnations,
    /// which the caller takes.
    fn settle(&mut self, batches: &[Batch], outcomes: &mut [Outcome]) {
        // Nothing failed before this attempt: the common case, no key built.
        if self.applied.is_empty() {
            return;
        }
        for (b, o) in batches.iter().zip(outcomes.iter_mut()) {
            let key = (b.agent.clone(), b.incarnation, b.seq);
            if self.applied.remove(&key) && *o == Outcome::Duplicate {
                *o = Outcome::New;
            }
        }
        self.applied.clear();
    }
}

/// Applies `batches` in one transaction; answers the outcome of each and
/// appends the agent incarnations seen for the first time to `progress`,
/// storing with each new batch what the checks took out of it (`refused`,
/// in the same transaction). A batch fault (see the module note) is
/// isolated by [`one_by_one`]. What an attempt that fails applied stays in
/// `progress` for the next (see the module note). A panic anywhere in here
/// is a [`StoreError::Panicked`] of the group, never the end of ingest.
pub(super) async fn apply<S: Ingest>(
    store: &S,
    batches: &[Batch],
    refused: &[Refusals],
    progress: &mut Progress,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = unpanicked(async {
        match unpanicked(store.apply_refused(batches, refused)).await {
            Ok(mut r) => {
                progress.incarnations.append(&mut r.incarnations);
                r.applied.iter().map(|a| outcome(Some(a))).collect()
            }
            Err(e) => {
                let e = progress.failed(batches, e);
                match e.whole_batch() {
                    Some(_) => one_by_one(store, batches, refused, progress, e).await,
                    None => Err(e),
                }
            }
        }
    })
    .await?;
    progress.settle(batches, &mut outcomes);
    Ok(outcomes)
}

/// What became of a batch the store answered for.
fn outcome(a: Option<&Applied>) -> Result<Outcome, StoreError> {
    match a {
        Some(Applied::New) => Ok(Outcome::New),
        Some(Applied::Duplicate) => Ok(Outcome::Duplicate),
        None => Err(StoreError::Task("no outcome for a batch".into())),
    }
}

/// The group after the batch fault `error`: each batch applied alone
/// (a group of one already was: `error` is its answer), and those that
/// still fail refused whole and recorded in one transaction (see the
/// module note), or the first such error when the round proved nothing.
async fn one_by_one<S: Ingest>(
    store: &S,
    batches: &[Batch],
    refused: &[Refusals],
    progress: &mut Progress,
    error: StoreError,
) -> Result<Vec<Outcome>, StoreError> {
    let mut each: Vec<Option<Outcome>> = Vec::with_capacity(batches.len());
    // (index, why, error) of each batch that failed alone.
    let mut faults: Vec<(usize, WholeBatch, StoreError)> = Vec::new();
    let mut proven = false;
    if let ([_], Some(why)) = (batches, error.whole_batch()) {
        each.push(None);
        faults.push((0, why, error));
    } else {
        if batches.len() > 1 {
            tracing::warn!(%error, batches = batches.len(),
                "a group failed on its batches; applying them one by one");
        }
        for (i, b) in batches.iter().enumerate() {
            let r = refused.get(i..=i).unwrap_or_default();
            let one = std::slice::from_ref(b);
            match unpanicked(store.apply_refused(one, r)).await {
                Ok(mut r) => {
                    progress.incarnations.append(&mut r.incarnations);
                    proven = true;
                    let o = outcome(r.applied.first())?;
                    if o == Outcome::New {
                        progress.applied(b);
                    }
                    each.push(Some(o));
                }
                Err(e) => {
                    let e = progress.failed(one, e);
                    match e.whole_batch() {
                        Some(why) => {
                            each.push(None);
                            faults.push((i, why, e));
                        }
                        None => return Err(e),
                    }
                }
            }
        }
    }
    if !proven {
        if let Some(i) = faults
            .iter()
            .position(|(_, why, _)| *why == WholeBatch::StoreFailed)
        {
            return Err(faults.swap_remove(i).2);
        }
    }
    // Every refused batch recorded in one transaction.
    let (bad, refusals): (Vec<Batch>, Vec<Refusals>) = faults
        .iter()
        .map(|&(i, why, _)| {
            let mut r = refused.get(i).copied().unwrap_or_default();
            r.refuse_whole(why, &batches[i]);
            (batches[i].clone(), r)
        })
        .unzip();
    let mut rec = match bad.is_empty() {
        true => return settled(each),
        false => unpanicked(store.record_refused(&bad, &refusals))
            .await
            .map_err(|e| progress.failed(&bad, e))?,
    };
    progress.incarnations.append(&mut rec.incarnations);
    for ((i, why, error), applied) in faults.into_iter().zip(&rec.applied) {
        each[i] = Some(match applied {
            Applied::Duplicate => Outcome::Duplicate,
            Applied::New => {
                // Confirmed so the agent stops resending what cannot
                // apply; logged (once: a redelivery is a duplicate) and
                // counted, never silent.
                let b = &batches[i];
                let (agent, seq, partials) = (&b.agent, b.seq, b.partials.len());
                match why {
                    WholeBatch::Unmergeable => tracing::warn!(agent, incarnation = %b.incarnation,
                        seq, partials, %error, "batch refused: cannot merge into the stored window"),
                    WholeBatch::StoreFailed => tracing::error!(agent, incarnation = %b.incarnation,
                        seq, partials, %error,
                        "batch refused: the store fails on it alone while other batches apply (a bug: please report it with this line)"),
                }
                Outcome::Refused(why)
            }
        });
    }
    settled(each)
}

/// Every batch's outcome, or an error if one has none.
fn settled(each: Vec<Option<Outcome>>) -> Result<Vec<Outcome>, StoreError> {
    each.into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Task("no outcome for a batch".into())))
        .collect()
}

/// `f`'s answer, or [`StoreError::Panicked`] if it panicked (the stores
/// leave their state sound after a panic).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Committed;

    fn batch(agent: &str, seq: u64) -> Batch {
        Batch::new(agent, seq, 0, Vec::new())
    }

    #[test]
    fn what_a_failed_attempt_applied_counts_once_when_the_group_commits() {
        let (a1, a2, b1) = (batch("a", 1), batch("a", 2), batch("b", 1));
        let mut p = Progress::default();
        // Lanes: b's committed (b 1 new), a's failed.
        let partly = StoreError::Partly {
            error: Box::new(StoreError::Panicked("bug".into())),
            committed: Box::new(Committed {
                applied: vec![None, None, Some(Applied::New)],
                incarnations: Vec::new(),
            }),
        };
        let group = [a1.clone(), a2.clone(), b1.clone()];
        let e = p.failed(&group, partly);
        assert!(matches!(e, StoreError::Panicked(_)));
        // Alone: a 1 applied, then the database fails.
        p.applied(&a1);
        // The next attempt finds a 1 and b 1 applied, b 1 delivered twice.
        let group = [a1, a2, b1.clone(), b1];
        let mut outcomes = [
            Outcome::Duplicate,
            Outcome::New,
            Outcome::Duplicate,
            Outcome::Duplicate,
        ];
        p.settle(&group, &mut outcomes);
        assert_eq!(
            outcomes,
            [Outcome::New, Outcome::New, Outcome::New, Outcome::Duplicate],
            "each batch new once, a redelivery still a duplicate"
        );
        let mut again = [Outcome::Duplicate; 4];
        p.settle(&group, &mut again);
        assert_eq!(
            again,
            [Outcome::Duplicate; 4],
            "nothing kept after a commit"
        );
    }
}
