//! The retention contract on either backend: expiry deletes exactly the
//! windows of a width that start before the cut, in batches no larger than
//! asked, leaves every other width and every later window as its readings
//! make it, takes expired rows' parked entries with them, and a change-feed
//! reader following across an expiry neither skips a live change nor gets
//! one twice; and a step that fails for one width stops no other width's
//! expiry, nor the reclaim.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tributary_collector::config::Config;
use tributary_collector::retention::{
    LeaseClock, Policy, RetentionConfig, RetentionMetrics, RetentionTask, Step, GRACE_MS, LEASE,
};
use tributary_collector::store::prelude::*;
use tributary_collector::store::{Answer, Changed, Lease, StoreError};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, Summary, Width, Window};

use super::{all_windows, assert_judged, key, Truth, DAY, HOUR, MIN, T0};

/// Runs the contract on an empty `store` keeping roll-ups of 1 h and 1 d,
/// with `batches` (one-minute partials from `T0` on, all of `truth`'s
/// readings) in two halves around a feed reader's first read.
pub(crate) async fn check_retention<S: Store>(store: &S, batches: &[Batch], truth: &Truth) {
    let minute = Width::new(MIN).unwrap();
    let cut = T0 + 30 * MIN;
    let half = batches.len() / 2;
    store.apply(&batches[..half]).await.unwrap();

    // A sink reads the feed so far; parks one row that will expire and one
    // that will not.
    let first = store.changed_since(minute, 0, usize::MAX).await.unwrap();
    let mark = first.last().unwrap().change;
    let at = |c: &Changed| (c.series.clone(), c.stored.window.start());
    let old = first
        .iter()
        .find(|c| c.stored.window.start() < cut)
        .unwrap();
    let live = first
        .iter()
        .find(|c| c.stored.window.start() >= cut)
        .unwrap();
    store.park("s", minute, &[at(old), at(live)]).await.unwrap();
    store.apply(&batches[half..]).await.unwrap();

    // One bounded batch, then the task for the rest.
    let expiring = truth.keys().filter(|(_, start)| *start < cut).count();
    assert!(expiring > 5, "the workload has windows to expire");
    assert_eq!(store.expire(minute, cut, 5).await.unwrap(), 5);
    let keep = DAY;
    let policy = Policy::new(keep, vec![(HOUR, 0), (DAY, 0)]);
    let now = cut + GRACE_MS + keep + MIN - 1;
    assert_eq!(policy.delete_before(minute, now), Some(cut));
    let cfg = RetentionConfig {
        batch_rows: 4,
        ..RetentionConfig::default()
    };
    let task = RetentionTask::new(store.clone(), policy, cfg);
    let run = task.run_once(now).await;
    let rest = u64::try_from(expiring - 5).unwrap();
    assert_eq!(run.expired, vec![(minute, rest)]);
    assert!(run.behind.is_empty());
    assert_eq!(task.metrics().expired(minute), rest);
    assert_eq!(task.metrics().lag_ms(minute), 0);
    // Nothing left to do.
    assert_eq!(task.run_once(now).await.expired, vec![]);

    // Minutes before the cut are gone; the rest and the roll-ups are as
    // their readings make them.
    let kept = since(truth, MIN, cut);
    assert_judged(store, &kept, MIN).await;
    for width in [HOUR, DAY] {
        assert_judged(store, truth, width).await;
    }
    let widths: Vec<i64> = store
        .widths()
        .await
        .unwrap()
        .iter()
        .map(|w| w.ms())
        .collect();
    assert_eq!(widths, [MIN, HOUR, DAY]);
    let oldest = kept.keys().map(|(_, s)| *s).min();
    assert_eq!(store.oldest(minute).await.unwrap(), oldest);

    // The expired row's parked entry went with it.
    let parked = store.parked("s", minute, 0, usize::MAX).await.unwrap();
    let parked: Vec<_> = parked.iter().map(at).collect();
    assert_eq!(parked, [at(live)]);

    // The reader goes on from its mark: each live row the second half
    // wrote, once, and none that expired.
    let later = store.changed_since(minute, mark, usize::MAX).await.unwrap();
    let seen: Vec<(String, i64)> = later
        .iter()
        .map(|c| (c.series.to_string(), c.stored.window.start()))
        .collect();
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), distinct.len(), "no row twice");
    let touched: BTreeSet<(String, i64)> = batches[half..]
        .iter()
        .flat_map(|b| b.partials.iter())
        .filter(|p| p.window.start() >= cut)
        .map(|p| (p.series.to_string(), p.window.start()))
        .collect();
    assert_eq!(distinct, touched);
    // Past its last change nothing is sent again, until a new write.
    let last = later.last().map_or(mark, |c| c.change);
    assert!(store
        .changed_since(minute, last, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    let mut again = batches[0].clone();
    again.seq = 1_000_000;
    again.partials.retain(|p| p.window.start() >= cut);
    assert!(!again.partials.is_empty(), "batch 0 has a live partial");
    store.apply(&[again.clone()]).await.unwrap();
    let next = store.changed_since(minute, last, usize::MAX).await.unwrap();
    let next: BTreeSet<(String, i64)> = next
        .iter()
        .map(|c| (c.series.to_string(), c.stored.window.start()))
        .collect();
    let sent: BTreeSet<(String, i64)> = again
        .partials
        .iter()
        .map(|p| (p.series.to_string(), p.window.start()))
        .collect();
    assert_eq!(next, sent);

    // A write into an expired window (ingest refuses those; the store must
    // still not merge into what it forgot) makes a fresh row of it alone.
    let mut into_expired = batches[0].clone();
    into_expired.seq = 1_000_001;
    into_expired.partials.retain(|p| p.window.start() < cut);
    into_expired.partials.truncate(1);
    let p = into_expired.partials[0].clone();
    store.apply(&[into_expired]).await.unwrap();
    let row = store
        .windows(&p.series, minute, p.window.start(), p.window.end())
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].summary, p.summary);
    assert_eq!(row[0].revision, 0);
}

/// (width, step) pairs, `None` for the whole run's steps.
type Steps = Vec<(Option<Width>, Step)>;

/// A store whose retention steps fail where the test says: `fail` holds
/// the (width, step) pairs that answer an error (`None`: the widths'
/// listing; with [`Step::Lease`], taking the lease); every other call goes
/// to the real store. Counts reclaims. With `intrude` holding a lease's
/// time to live, the next expiry batch, once done, acts as if it had
/// outlasted that lease and another instance had taken over: `clock` (the
/// task's lease clock) moves that far ahead, and the `retention` lease ends
/// in the store as its expiry would end it — released for its holder
/// ([`HOLDER`]; the store's clock is not the test's to move) — and another
/// holder, "intruder", takes it for an hour. `intrude` is then cleared.
#[derive(Clone)]
struct Failing<S> {
    inner: S,
    fail: Arc<Mutex<Steps>>,
    reclaims: Arc<AtomicUsize>,
    intrude: Arc<Mutex<Option<Duration>>>,
    clock: LeaseClock,
}

/// The name the task under test holds the `retention` lease by.
const HOLDER: &str = "me";

impl<S: Clone> Failing<S> {
    fn new(inner: &S) -> Self {
        Failing {
            inner: inner.clone(),
            fail: Arc::default(),
            reclaims: Arc::default(),
            intrude: Arc::default(),
            clock: LeaseClock::default(),
        }
    }
}

impl<S> Failing<S> {
    fn fails(&self, width: Option<Width>, step: Step) -> Answer<()> {
        if self.fail.lock().unwrap().contains(&(width, step)) {
            return Err(StoreError::Backend(format!(
                "injected: {step:?} at {width:?}"
            )));
        }
        Ok(())
    }
}

impl<S: Expire + Leases> Expire for Failing<S> {
    async fn widths(&self) -> Answer<Vec<Width>> {
        self.fails(None, Step::Widths)?;
        self.inner.widths().await
    }

    async fn prepare(&self, width: Width, now: i64) -> Answer<()> {
        self.fails(Some(width), Step::Prepare)?;
        self.inner.prepare(width, now).await
    }

    async fn expire(&self, width: Width, before: i64, limit: usize) -> Answer<usize> {
        self.fails(Some(width), Step::Expire)?;
        let n = self.inner.expire(width, before, limit).await;
        let outlasted = self.intrude.lock().unwrap().take();
        if let Some(ttl) = outlasted {
            self.clock.advance(ttl);
            self.inner.release(LEASE, HOLDER).await.unwrap();
            let hour = Duration::from_secs(3_600);
            let taken = self.inner.lease(LEASE, "intruder", hour).await.unwrap();
            assert_eq!(taken, Lease::Ours, "the intruder takes the ended lease");
        }
        n
    }

    async fn reclaim(&self, pages: u32) -> Answer<u64> {
        self.reclaims.fetch_add(1, Ordering::Relaxed);
        self.fails(None, Step::Reclaim)?;
        self.inner.reclaim(pages).await
    }

    async fn oldest(&self, width: Width) -> Answer<Option<i64>> {
        self.fails(Some(width), Step::Oldest)?;
        self.inner.oldest(width).await
    }
}

impl<S: Leases> Leases for Failing<S> {
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Answer<Lease> {
        self.fails(None, Step::Lease)?;
        self.inner.lease(name, holder, ttl).await
    }

    fn release(&self, name: &str, holder: &str) -> impl Future<Output = Answer<()>> + Send {
        self.inner.release(name, holder)
    }
}

/// On an empty `store` keeping roll-ups of 1 h and 1 d: a run in which
/// expiry fails at the minutes (the first width) and preparing fails at the
/// hours still deletes the expired hours and days and reclaims; the
/// minutes stay whole, their lag is what the test's oldest start says, and
/// each failure is counted by width and step; a run whose widths cannot be
/// listed still reclaims; a day later, a run in which reading the minutes'
/// oldest start and the reclaim fail deletes what expired at every width
/// meanwhile, counts both failures, and leaves the minutes' lag gauge at its
/// last value; the next clean run sets it. Judged by the windows the test
/// inserted and their starts against the cuts.
pub(crate) async fn check_one_failing_width<S: Store>(store: &S) {
    let (minute, hour, day) = (
        Width::new(MIN).unwrap(),
        Width::new(HOUR).unwrap(),
        Width::new(DAY).unwrap(),
    );
    // Four days from a day boundary, three minutes a day for two devices.
    let d0 = T0 / DAY * DAY + DAY;
    let mut truth = Truth::new();
    let mut partials = Vec::new();
    for d in 0..4 {
        for (i, m) in [0, 61, 750].into_iter().enumerate() {
            for device in ["dev-a", "dev-b"] {
                let start = d0 + d * DAY + m * MIN;
                let readings = vec![(start + 5, 1_000 + d * 10 + i as i64)];
                let mut s = Summary::new(Quantum::new(-3).unwrap());
                s.insert(readings[0].0, readings[0].1).unwrap();
                partials.push(Partial {
                    series: key(device),
                    window: Window::new(start, minute).unwrap(),
                    summary: s,
                });
                truth.insert((device.to_string(), start), readings);
            }
        }
    }
    store
        .apply(&[Batch::new("fail", 1, d0, partials)])
        .await
        .unwrap();

    // Minutes kept a day, hours and days two: at `now` the minutes before
    // day 2, the hours before day 1 and day 0 go.
    let policy = Policy::new(DAY, vec![(HOUR, 2 * DAY), (DAY, 2 * DAY)]);
    let now = d0 + 3 * DAY + GRACE_MS + MIN - 1;
    let cuts = [
        (minute, d0 + 2 * DAY),
        (hour, d0 + DAY - HOUR + MIN),
        (day, d0 + MIN),
    ];
    for (w, cut) in cuts {
        assert_eq!(policy.delete_before(w, now), Some(cut), "{w:?}");
    }
    let kept = |width: Width, cut: i64| since(&truth, width.ms(), cut);
    assert_judged(store, &truth, MIN).await;
    for (w, cut) in cuts {
        assert!(
            kept(w, cut).len() < truth.len(),
            "{w:?}: the workload has windows to expire"
        );
    }

    let failing = Failing::new(store);
    *failing.fail.lock().unwrap() = vec![(Some(minute), Step::Expire), (Some(hour), Step::Prepare)];
    let cfg = RetentionConfig {
        batch_rows: 3,
        ..RetentionConfig::default()
    };
    let task = RetentionTask::new(failing.clone(), policy.clone(), cfg);
    let run = task.run_once(now).await;
    assert_eq!(
        run.failed,
        [(Some(minute), Step::Expire), (Some(hour), Step::Prepare)]
    );
    let widths: Vec<Width> = run.expired.iter().map(|e| e.0).collect();
    assert_eq!(widths, [hour, day]);
    assert!(run.behind.is_empty());
    // The minutes whole, the hours and days from their cuts.
    assert_judged(store, &truth, MIN).await;
    assert_judged(store, &kept(hour, cuts[1].1), HOUR).await;
    assert_judged(store, &kept(day, cuts[2].1), DAY).await;
    assert!(failing.reclaims.load(Ordering::Relaxed) >= 1, "reclaimed");
    let m = task.metrics();
    assert_eq!(m.errors(Some(minute), Step::Expire), 1);
    assert_eq!(m.errors(Some(hour), Step::Prepare), 1);
    assert_eq!(m.errors(Some(day), Step::Prepare), 0);
    assert_eq!(m.expired(minute), 0);
    let oldest = truth.keys().map(|(_, s)| *s).min().unwrap();
    assert_eq!(m.lag_ms(minute), cuts[0].1 - oldest);
    assert_eq!(m.lag_ms(hour), 0);

    // No width listed: nothing deleted, the reclaim still runs.
    *failing.fail.lock().unwrap() = vec![(None, Step::Widths)];
    let reclaims = failing.reclaims.load(Ordering::Relaxed);
    let run = task.run_once(now).await;
    assert_eq!(run.failed, [(None, Step::Widths)]);
    assert!(run.expired.is_empty());
    assert!(failing.reclaims.load(Ordering::Relaxed) > reclaims);
    assert_eq!(m.errors(None, Step::Widths), 1);
    assert_judged(store, &truth, MIN).await;

    // A day later the minutes' oldest start cannot be read and the reclaim
    // fails: every width still expires what it has to (the minutes of days
    // 0–2, the hours before day 2, day 1), both failures are counted, and
    // the minutes' lag keeps its last value (it would be 0 now).
    *failing.fail.lock().unwrap() = vec![(Some(minute), Step::Oldest), (None, Step::Reclaim)];
    let later = now + DAY;
    let cuts_later = [
        (minute, d0 + 3 * DAY),
        (hour, d0 + 2 * DAY - HOUR + MIN),
        (day, d0 + DAY + MIN),
    ];
    for (w, cut) in cuts_later {
        assert_eq!(policy.delete_before(w, later), Some(cut), "{w:?}");
    }
    let lag = cuts[0].1 - oldest;
    let reclaims = failing.reclaims.load(Ordering::Relaxed);
    let run = task.run_once(later).await;
    assert_eq!(
        run.failed,
        [(Some(minute), Step::Oldest), (None, Step::Reclaim)]
    );
    let widths: Vec<Width> = run.expired.iter().map(|e| e.0).collect();
    assert_eq!(widths, [minute, hour, day]);
    assert!(run.behind.is_empty() && !run.cut_short);
    for (w, cut) in cuts_later {
        assert_judged(store, &kept(w, cut), w.ms()).await;
    }
    assert_eq!(failing.reclaims.load(Ordering::Relaxed), reclaims + 1);
    assert_eq!(m.errors(Some(minute), Step::Oldest), 1);
    assert_eq!(m.errors(Some(hour), Step::Oldest), 0);
    assert_eq!(m.errors(None, Step::Reclaim), 1);
    assert_eq!(m.lag_ms(minute), lag, "the lag keeps its value");
    assert_eq!(m.lag_ms(hour), 0);

    // Healed: the next run reads the oldest start again; the counts stay.
    failing.fail.lock().unwrap().clear();
    let run = task.run_once(later).await;
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert!(run.expired.is_empty());
    for (w, cut) in cuts_later {
        assert_judged(store, &kept(w, cut), w.ms()).await;
    }
    assert_eq!(m.lag_ms(minute), 0);
    assert_eq!(m.errors(Some(minute), Step::Expire), 1);
    assert_eq!(m.errors(Some(minute), Step::Oldest), 1);
    assert_eq!(m.errors(None, Step::Reclaim), 1);
}

/// `truth`'s readings in the windows of `width` that start at `cut` or
/// later.
fn since(truth: &Truth, width: i64, cut: i64) -> Truth {
    truth
        .iter()
        .filter(|((_, start), _)| start.div_euclid(width) * width >= cut)
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect()
}

/// Polls `f` every 10 ms; panics after 30 s (a hang guard, not a timing
/// assertion).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The task's loop on an empty `store` keeping roll-ups of 1 h and 1 d,
/// minutes a day (so by the real clock every minute the test writes, in
/// 2023, has expired), under the `retention` lease: while the store cannot
/// answer for the lease no run starts and each miss is counted as step
/// `lease`; a run whose lease passes to another holder between two batches
/// (its batch outlasted the lease: the default 2 minutes, passed at once on
/// the task's lease clock, [`Failing`]) stops after that batch and the task
/// stands by while the other holds it; once it is given up the task takes
/// it and expires the rest. The configuration is one a user can write,
/// validated. Judged by the windows the test wrote.
pub(crate) async fn check_lease_faults<S: Store>(store: &S) {
    let minute = Width::new(MIN).unwrap();
    let mut truth = Truth::new();
    let mut partials = Vec::new();
    for m in 0..10 {
        for device in ["dev-a", "dev-b"] {
            let start = T0 + m * 7 * MIN;
            let reading = (start + 3, 500 + m);
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            s.insert(reading.0, reading.1).unwrap();
            partials.push(Partial {
                series: key(device),
                window: Window::new(start, minute).unwrap(),
                summary: s,
            });
            truth.insert((device.to_string(), start), vec![reading]);
        }
    }
    let total = truth.len() as u64;
    store
        .apply(&[Batch::new("lease", 1, T0, partials)])
        .await
        .unwrap();
    assert_judged(store, &truth, MIN).await;

    let failing = Failing::new(store);
    *failing.fail.lock().unwrap() = vec![(None, Step::Lease)];
    let cfg = Config::from_toml(&format!(
        "rollups_ms = [{HOUR}, {DAY}]\n\
         [retention]\nwindows_ms = {DAY}\ninterval_ms = 20\nbatch_rows = 3\n"
    ))
    .unwrap();
    let policy = cfg.retention_policy();
    assert_eq!(policy, Policy::new(DAY, vec![(HOUR, 0), (DAY, 0)]));
    let lease = cfg.retention.lease();
    let task = RetentionTask::new(failing.clone(), policy, cfg.retention)
        .with_lease_clock(failing.clock.clone());
    let m: Arc<RetentionMetrics> = task.metrics().clone();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(task.run(HOLDER.to_string(), stop_rx));

    // The store cannot say who holds the lease: no run, each miss counted.
    until("three lease failures", || {
        m.errors(None, Step::Lease) >= 3 && m.skipped() >= 3
    })
    .await;
    assert_eq!(m.runs(), 0);
    assert!(!m.leader());
    assert_judged(store, &truth, MIN).await;

    // Healed: the task takes the lease and runs; its first batch outlasts
    // the lease and another holder takes it. The run stops after that one
    // batch and the task stands by.
    *failing.intrude.lock().unwrap() = Some(lease);
    let errors = m.errors(None, Step::Lease);
    failing.fail.lock().unwrap().clear();
    until("the run to lose the lease", || {
        m.runs() == 1 && !m.leader() && failing.intrude.lock().unwrap().is_none()
    })
    .await;
    let skipped = m.skipped();
    until("two runs skipped under the intruder", || {
        m.skipped() >= skipped + 2
    })
    .await;
    assert_eq!(m.runs(), 1);
    assert_eq!(m.expired(minute), 3, "one batch");
    assert_eq!(m.errors(None, Step::Lease), errors);
    // The windows left are exactly as their readings make them.
    let left = all_windows(store, MIN).await;
    assert_eq!(left.len() as u64, total - 3);
    let unexpired: Truth = truth
        .iter()
        .filter(|((d, s), _)| left.contains_key(&(key(d).to_string(), *s)))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    assert_judged(store, &unexpired, MIN).await;

    // The intruder gives the lease up: the task takes it and expires the
    // rest; the roll-ups stay as the readings make them.
    failing.inner.release(LEASE, "intruder").await.unwrap();
    until("every minute expired", || {
        m.leader() && m.expired(minute) == total
    })
    .await;
    assert!(all_windows(store, MIN).await.is_empty());
    for width in [HOUR, DAY] {
        assert_judged(store, &truth, width).await;
    }
    stopped(stop, running, &m).await;
}

/// The task's loop on an empty `store` when a renewal between runs fails:
/// the task runs hourly under the least lease a user can configure (10 s),
/// so it renews between runs, every 3.3 s. While the store cannot answer
/// the task's renewals (injected, [`Failing`]) it does no work and counts
/// each miss; once the store answers again it renews at its next try —
/// well before the lease expires — and holds it on. Another instance asking
/// the real store every 100 ms from the start until the first lease's
/// expiry has long passed finds the task holding it every time. (A holder
/// that forgot the lease at the error would let it lapse until its next
/// run, an hour away, and the other would take it 10 s after the task did.)
pub(crate) async fn check_renewal_retried<S: Store>(store: &S) {
    let failing = Failing::new(store);
    let cfg = Config::from_toml(&format!(
        "rollups_ms = [{HOUR}, {DAY}]\n\
         [retention]\nwindows_ms = {DAY}\ninterval_ms = {HOUR}\nlease_ms = 10000\n"
    ))
    .unwrap();
    let lease = cfg.retention.lease();
    assert_eq!(lease, Duration::from_secs(10));
    let task = RetentionTask::new(failing.clone(), cfg.retention_policy(), cfg.retention);
    let m: Arc<RetentionMetrics> = task.metrics().clone();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(task.run(HOLDER.to_string(), stop_rx));
    until("the first run, under the lease", || {
        m.leader() && m.runs() == 1
    })
    .await;
    let taken = std::time::Instant::now();

    // The other instance asks all along; the renewals fail from now on.
    let other = {
        let inner = failing.inner.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while taken.elapsed() < lease + Duration::from_secs(3) {
                answers.push(inner.lease(LEASE, "other", lease).await.unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };
    *failing.fail.lock().unwrap() = vec![(None, Step::Lease)];
    until("a renewal and a retry to fail", || {
        m.errors(None, Step::Lease) >= 2
    })
    .await;
    assert!(!m.leader(), "no work while the lease is unconfirmed");
    assert!(
        taken.elapsed() < lease,
        "the retry came before the lease's expiry"
    );
    failing.fail.lock().unwrap().clear();
    until("the lease to be renewed", || m.leader()).await;
    assert!(
        taken.elapsed() < lease,
        "renewed before the first lease's expiry"
    );

    let answers = other.await.unwrap();
    assert!(answers.len() >= 50, "{} asks", answers.len());
    let theirs = Lease::Theirs(HOLDER.to_string());
    assert!(
        answers.iter().all(|a| *a == theirs),
        "the other instance got the lease: {answers:?}"
    );
    assert!(m.leader());
    assert_eq!(m.runs(), 1, "no run but the first (hourly)");
    assert_eq!(m.skipped(), 0);
    stopped(stop, running, &m).await;
}

/// Stops the task `running` (its `stop` sent) and checks that it ended
/// within 10 s and gave the lease up.
async fn stopped(
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
    m: &RetentionMetrics,
) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert!(!m.leader());
}

/// One partial of `width` at `start` holding one reading of `device`.
fn one_window(device: &str, width: Width, start: i64) -> Partial {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(start, 1_234).unwrap();
    Partial {
        series: key(device),
        window: Window::new(start, width).unwrap(),
        summary: s,
    }
}

/// The minute starts [`check_oldest`] writes, some negative, over days
/// −2 to 1 (PostgreSQL: days −2 to 0 in their own partitions, day 1 in the
/// default).
pub(crate) fn oldest_minutes() -> Vec<i64> {
    vec![
        -2 * DAY + 700 * MIN,
        -2 * DAY + 5 * MIN,
        -DAY + 7 * MIN,
        -MIN,
        3 * MIN,
        DAY + 11 * MIN,
    ]
}

/// `oldest` answers the least start the test wrote at each width: minutes
/// across several days (negative starts included; on PostgreSQL across
/// several partitions and the default, `prepare` made for days −2 to 0),
/// hours (roll-ups of both, which no partition holds), one-second windows far
/// before the epoch (only in the default), a width with no rows (none), and
/// the least start left after expiry took the oldest minutes (a dropped
/// partition on PostgreSQL). `written` runs once every row is written,
/// before the expiry.
pub(crate) async fn check_oldest<S: Store>(store: &S, written: impl FnOnce()) {
    let (second, minute, hour) = (
        Width::new(1_000).unwrap(),
        Width::new(MIN).unwrap(),
        Width::new(HOUR).unwrap(),
    );
    store.prepare(minute, -2 * DAY).await.unwrap();
    assert_eq!(store.oldest(minute).await.unwrap(), None, "no rows yet");
    assert_eq!(store.oldest(second).await.unwrap(), None);
    let minutes = oldest_minutes();
    let seconds = [-1_000, -3_000_000_000_000, 5_000];
    let mut partials: Vec<Partial> = minutes
        .iter()
        .enumerate()
        .map(|(i, &s)| one_window(&format!("dev-{}", i % 2), minute, s))
        .collect();
    partials.extend(seconds.iter().map(|&s| one_window("dev-s", second, s)));
    store
        .apply(&[Batch::new("old", 1, 0, partials)])
        .await
        .unwrap();

    let least = |starts: &[i64]| starts.iter().copied().min();
    // Both agent widths roll up into the hours.
    let hours: Vec<i64> = minutes
        .iter()
        .chain(&seconds)
        .map(|s| s.div_euclid(HOUR) * HOUR)
        .collect();
    assert_eq!(store.oldest(minute).await.unwrap(), least(&minutes));
    assert_eq!(store.oldest(hour).await.unwrap(), least(&hours));
    assert_eq!(store.oldest(second).await.unwrap(), least(&seconds));
    let never = Width::new(7 * DAY).unwrap();
    assert_eq!(store.oldest(never).await.unwrap(), None);
    // Starts near the end of event time (a search whose halving rounded
    // up there never ended): the last whole day's two-minute windows.
    let far = Width::new(2 * MIN).unwrap();
    let last = (i64::MAX / DAY - 1) * DAY;
    let ends: Vec<i64> = [3, 1, 2].iter().map(|k| last + k * 2 * MIN).collect();
    let at_end: Vec<Partial> = ends
        .iter()
        .map(|&s| one_window("dev-far", far, s))
        .collect();
    store
        .apply(&[Batch::new("old", 2, 0, at_end)])
        .await
        .unwrap();
    assert_eq!(store.oldest(far).await.unwrap(), least(&ends));
    written();

    // Expiry takes day −2 (and on PostgreSQL drops its partition) and the
    // seconds before 0.
    let mut cut = -DAY;
    while store.expire(minute, cut, 100).await.unwrap() == 100 {}
    let left: Vec<i64> = minutes.iter().copied().filter(|&s| s >= cut).collect();
    assert_eq!(store.oldest(minute).await.unwrap(), least(&left));
    cut = 0;
    while store.expire(second, cut, 100).await.unwrap() == 100 {}
    assert_eq!(store.oldest(second).await.unwrap(), Some(5_000));
    while store.expire(minute, 2 * DAY, 100).await.unwrap() == 100 {}
    assert_eq!(store.oldest(minute).await.unwrap(), None, "all expired");
}
