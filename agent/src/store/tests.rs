//! Tests of the SQLite store and the outbox.

use std::collections::BTreeMap;

use tributary_core::batch::{Batch, Encoding};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

use super::outbox::Limits;
use super::*;
use crate::window::Emitted;

pub(super) fn key(m: &str) -> SeriesKey {
    SeriesKey::new(m, "dev", BTreeMap::new()).unwrap()
}

pub(super) fn summary(n: i64) -> Summary {
    let mut s = Summary::new(Quantum::DEFAULT);
    for i in 0..n {
        s.insert(i, i * 1000 + 7).unwrap();
    }
    s
}

pub(super) fn limits(max: u64) -> Limits {
    Limits {
        max_bytes: max,
        widths: vec![Width::new(4000).unwrap(), Width::new(16000).unwrap()],
    }
}

/// The store in `dir` with batches of at most `batch_max_partials`.
pub(super) fn open(dir: &tempfile::TempDir, batch_max_partials: usize) -> Store {
    let cfg = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    };
    let outbox = OutboxConfig {
        batch_max_partials,
        ..OutboxConfig::default()
    };
    let mut st = Store::open(&dir.path().join("a.db"), &cfg, &outbox).unwrap();
    st.set_limits(limits(u64::MAX));
    st
}

/// Commits `c` under an outbox limit of `max_bytes`.
pub(super) fn commit(st: &mut Store, c: &Commit, max_bytes: u64) -> CommitOutcome {
    st.set_limits(limits(max_bytes));
    st.commit(c).unwrap()
}

pub(super) fn setup(dir: &tempfile::TempDir, series: usize, batch_max_partials: usize) -> Store {
    let mut st = open(dir, batch_max_partials);
    let c = Commit {
        new_sources: vec![(0, "dev".into())],
        new_series: (0..series)
            .map(|i| SeriesRow {
                id: i as u32,
                key: key(&format!("m{i}")),
                quantum: Quantum::DEFAULT,
                source: 0,
                closed_before: i64::MIN,
            })
            .collect(),
        ..Commit::default()
    };
    commit(&mut st, &c, u64::MAX);
    st
}

pub(super) fn emit(series: u32, start: i64, n: i64) -> Emitted {
    Emitted {
        series,
        window: Window::new(start, Width::new(1000).unwrap()).unwrap(),
        summary: summary(n),
        revision: false,
    }
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut st = setup(&dir, 2, 200);
        let mut c = Commit::default();
        c.flush.checkpoints.push((1, 5000, summary(3)));
        c.flush.closed_before.push((1, 5000));
        c.watermarks.push((0, 5500));
        commit(&mut st, &c, u64::MAX);
    }
    let st = open(&dir, 200);
    let l = st.load().unwrap();
    assert_eq!(l.sources, vec![("dev".to_string(), Some(5500))]);
    assert_eq!(l.series.len(), 2);
    assert_eq!(l.series[1].closed_before, 5000);
    assert_eq!(l.windows, vec![(1, 5000, summary(3))]);
}

#[test]
fn batches_keep_their_identity_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 1, 2);
    let mut c = Commit::default();
    for i in 0..5 {
        c.flush.emitted.push(emit(0, i * 1000, 2));
    }
    commit(&mut st, &c, u64::MAX);
    let b = st.form_batches("gw", 99, 10, Encoding::Json).unwrap();
    assert_eq!(b.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let decoded = Batch::decode(&b[0].payload).unwrap();
    assert_eq!(decoded.partials.len(), 2);
    assert_eq!(decoded.watermark, 99);
    assert_eq!(st.pending_partials().unwrap(), 0);
    assert_eq!(st.confirm(&[2]).unwrap(), (1, 4));
    drop(st);
    let mut st = open(&dir, 10);
    let left = st.unconfirmed().unwrap();
    assert_eq!(left.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(left[0].payload, b[0].payload, "same bytes on resend");
    // The sequence counter is persisted too.
    let mut c = Commit::default();
    c.flush.emitted.push(emit(0, 9000, 1));
    commit(&mut st, &c, u64::MAX);
    let b = st.form_batches("gw", 0, 1, Encoding::Binary).unwrap();
    assert_eq!(b[0].seq, 4);
}

#[test]
fn batches_name_the_incarnation_and_where_the_unconfirmed_begin() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 1, 1);
    let mut c = Commit::default();
    for i in 0..6 {
        c.flush.emitted.push(emit(0, i * 1000, 1));
    }
    commit(&mut st, &c, u64::MAX);
    let ours = st.incarnation();
    let form = |st: &mut Store, n: usize| -> Vec<(u64, u64)> {
        st.form_batches("gw", 0, n, Encoding::Binary)
            .unwrap()
            .iter()
            .map(|b| {
                let d = Batch::decode(&b.payload).unwrap();
                assert_eq!((d.agent.as_str(), d.incarnation), ("gw", ours));
                (d.seq, d.first_unconfirmed)
            })
            .collect()
    };
    assert_eq!(form(&mut st, 3), [(1, 1), (2, 1), (3, 1)]);
    // 1 and 3 confirmed: 2 is the oldest unconfirmed.
    st.confirm(&[1, 3]).unwrap();
    assert_eq!(form(&mut st, 1), [(4, 2)]);
    st.confirm(&[2, 4]).unwrap();
    assert_eq!(form(&mut st, 1), [(5, 5)], "none waits: its own");
    drop(st);

    // The incarnation lives as long as the database file.
    let st = open(&dir, 1);
    assert_eq!(st.incarnation(), ours);
    drop(st);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        open(&other, 1).incarnation(),
        ours,
        "a new database: a new one"
    );
    let c = Connection::open(dir.path().join("a.db")).unwrap();
    c.execute("DELETE FROM meta WHERE key = 'incarnation'", [])
        .unwrap();
    drop(c);
    let st = open(&dir, 1);
    assert_ne!(st.incarnation(), ours, "drawn again when deleted");
    assert_eq!(open(&dir, 1).incarnation(), st.incarnation());
}

/// Binary batches are cut to what the collector's decoder accepts: 1,200
/// partials whose sketches fill both signs hold about 40 MB of buckets once
/// decoded, past its 16 MiB, though their bytes fit one batch. A batch over
/// it would be refused, never confirmed and sent again forever.
#[test]
fn binary_batches_stay_within_what_the_collector_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 4, 1200);
    // 32 octaves at 64 readings an octave on each side of zero.
    let values: Vec<i64> = (0..2048)
        .map(|i| (1000.0 * 2f64.powf((f64::from(i) + 0.5) / 64.0)).round() as i64)
        .flat_map(|v| [v, -v])
        .collect();
    let mut full = Summary::new(Quantum::DEFAULT);
    for (i, &v) in values.iter().enumerate() {
        full.insert(i as i64 % 1000, v).unwrap();
    }
    let mut c = Commit::default();
    for j in 0..1200i64 {
        let mut e = emit((j % 4) as u32, (j / 4) * 1000, 0);
        e.summary = full.clone();
        c.flush.emitted.push(e);
    }
    commit(&mut st, &c, u64::MAX);
    let formed = st.form_batches("gw", 0, 100, Encoding::Binary).unwrap();
    assert!(formed.len() >= 3, "{} batches", formed.len());
    let mut windows = std::collections::BTreeSet::new();
    let mut readings = 0u64;
    for f in &formed {
        let b = Batch::decode(&f.payload).unwrap();
        assert!(b.partials.len() < 1200);
        for p in &b.partials {
            readings += p.summary.count();
            windows.insert((p.series.metric().to_string(), p.window.start()));
        }
    }
    assert_eq!(windows.len(), 1200, "every partial once");
    assert_eq!(readings, 1200 * values.len() as u64);
    assert_eq!(st.pending_partials().unwrap(), 0);
}

/// A schema-1 database (tick-indexed sketches) is migrated when it holds no
/// summary and refused with a clear reason when it does.
#[test]
fn schema_1_is_migrated_when_empty_and_refused_when_it_holds_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let set_schema = |v: i64| {
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE meta SET value = ?1 WHERE key = 'schema'", [v])
            .unwrap();
    };
    let (cfg, outbox) = (StoreConfig::default(), OutboxConfig::default());
    let open = || Store::open(&path, &cfg, &outbox);
    drop(open().unwrap());
    set_schema(1);
    drop(open().unwrap());
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, SCHEMA);
    c.execute(
        "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (0, 0, 1000, 1, 1, x'00')",
        [],
    )
    .unwrap();
    drop(c);
    set_schema(1);
    let err = open().unwrap_err();
    assert!(matches!(err, StoreError::TickIndexed { found: 1 }), "{err}");
    assert!(err.to_string().contains("tick counts"), "{err}");
    set_schema(3);
    assert!(open().is_err());
}
