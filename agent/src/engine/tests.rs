//! Engine tests: the global tags reach the key of every kind of source, also
//! after a restart, and match the simulated devices' raw readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tokio::sync::{oneshot, watch};
use tributary_core::frame::Message;
use tributary_core::{Quantum, SeriesKey};
use tributary_runtime::now_ms;
use tributary_sim::SimDevice;

use super::*;
use crate::config::Config;
use crate::link::json::{JsonMessage, JsonReading};
use crate::sources::simulated;

/// The start of the tests' event times: an hour boundary a day ago, within
/// the default `[limits]` time bounds, fixed for the test run.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| (now_ms() - 86_400_000) / 3_600_000 * 3_600_000)
}

fn config(dir: &Path, extra: &str) -> Config {
    Config::from_toml(&format!(
        "agent_id = \"gw-1\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n\
         [simulated]\ndevices = 1\nwindows = 2\nstart_ms = {}\ndevice_window_ms = 1000\nreadings_per_window = 4\n\
         [tags]\nsite = \"berlin\"\ngateway = \"gw-1\"\n{extra}",
        dir.display().to_string(),
        t0()
    ))
    .unwrap()
}

/// The engine of `cfg`, with no uplink.
fn open(cfg: &Config) -> (Engine, Arc<Metrics>) {
    let (e, metrics, _, _) = open_with_uplink(cfg, 1);
    (e, metrics)
}

fn keys(e: &Engine) -> BTreeSet<String> {
    e.st.registry.keys().map(|(k, _)| k.to_string()).collect()
}

fn reading(metric: &str, tags: &[(&str, &str)]) -> JsonReading {
    JsonReading {
        metric: metric.into(),
        time: t0() + 500,
        value: 1.5,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn json(e: &mut Engine, device: &str, readings: Vec<JsonReading>) {
    e.handle(Input::Json {
        device: device.into(),
        msg: JsonMessage { id: None, readings },
        done: None,
    });
}

#[test]
fn global_tags_reach_every_source_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (mut e, _) = open(&cfg);
    // A device link (simulated: the firmware's own Hello).
    let sim = &SimDevice::all(&cfg.simulated)[0];
    let hello = sim.device().unwrap().hello(0);
    e.handle(Input::Link {
        link: "sim:sim-0".into(),
        frames: vec![(Message::Hello(hello), now_ms())],
        reply: None,
        fixed_offset: Some(sim.start_ms),
        done: None,
    });
    // JSON readings, one with its own `site`, which wins.
    json(
        &mut e,
        "j1",
        vec![reading("t", &[("site", "lab")]), reading("u", &[])],
    );
    // In-process readings.
    let (tx, mut rx) = oneshot::channel();
    e.handle(Input::Readings {
        key: SeriesKey::new("b", "bulk", BTreeMap::new()).unwrap(),
        quantum: Quantum::default(),
        points: vec![(t0() + 500, 7)],
        done: Some(tx),
    });
    assert!(rx.try_recv().is_err(), "acknowledged only after the commit");

    let g = ",gateway=\"gw-1\",site=\"berlin\"}";
    let want: BTreeSet<String> = [
        format!("humidity{{device=\"sim-0\"{g}"),
        format!("pressure{{device=\"sim-0\"{g}"),
        format!("temperature{{device=\"sim-0\"{g}"),
        "t{device=\"j1\",gateway=\"gw-1\",site=\"lab\"}".to_string(),
        format!("u{{device=\"j1\"{g}"),
        format!("b{{device=\"bulk\"{g}"),
    ]
    .into();
    assert_eq!(keys(&e), want);
    for (key, id) in e.st.registry.keys() {
        assert_eq!(
            e.st.win.series(id).unwrap().key(),
            key,
            "the windower holds the tagged key"
        );
    }
    // The raw readings of the simulated device name the same series.
    let truth: BTreeSet<String> =
        simulated::agent_readings(&cfg.simulated, &cfg.global_tags(), &cfg.limits)
            .unwrap()
            .iter()
            .map(|w| w.series.to_string())
            .collect();
    assert_eq!(truth.len(), 3);
    assert!(truth.is_subset(&want), "{truth:?}");
    e.commit();
    assert_eq!(rx.try_recv(), Ok(()), "acknowledged after the commit");
    drop(e);

    // After a restart the stored keys are found again: a repeated reading
    // makes no new series, and the device's channels resolve to them.
    let (mut e, _) = open(&cfg);
    assert_eq!(keys(&e), want);
    json(&mut e, "j1", vec![reading("u", &[])]);
    assert_eq!(e.st.registry.len(), want.len());
    let dev = e.st.devices.get("sim-0", sim.boot()).unwrap();
    let restored: BTreeSet<String> = dev
        .channels()
        .iter()
        .map(|&(_, id)| e.st.win.series(id).unwrap().key().to_string())
        .collect();
    assert_eq!(restored, truth);
}

#[test]
fn too_many_tags_with_the_global_ones_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[limits]\nmax_tags = 3\n");
    let (mut e, metrics) = open(&cfg);
    json(
        &mut e,
        "j1",
        vec![
            reading("ok", &[("room", "a")]),
            reading("too_many", &[("room", "a"), ("floor", "2")]),
        ],
    );
    assert_eq!(
        keys(&e),
        BTreeSet::from([
            "ok{device=\"j1\",gateway=\"gw-1\",room=\"a\",site=\"berlin\"}".to_string()
        ])
    );
    assert_eq!(metrics.readings_accepted.get(), 1);
    assert_eq!(metrics.rejected(crate::metrics::Reject::TooManyTags), 1);
}

/// The engine of `cfg` with its uplink ends: the batches it hands over and
/// the connection state it is told.
fn open_with_uplink(
    cfg: &Config,
    max_in_flight: usize,
) -> (
    Engine,
    Arc<Metrics>,
    mpsc::UnboundedReceiver<crate::store::FormedBatch>,
    watch::Sender<bool>,
) {
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&cfg.db_path(), &cfg.store, &cfg.outbox).unwrap();
    let (batches_tx, batches) = mpsc::unbounded_channel();
    let (connected, connected_rx) = watch::channel(false);
    let outbound = Outbound::new(
        &cfg.agent_id,
        cfg.uplink.encoding,
        max_in_flight,
        batches_tx,
        connected_rx,
    );
    let e = Engine::open(Parts {
        opened: Opened::read(store).unwrap(),
        window: &cfg.window,
        commit: &cfg.store,
        limits: &cfg.limits,
        tags: cfg.global_tags(),
        outbound,
        metrics: metrics.clone(),
    });
    (e, metrics, batches, connected)
}

/// The window starts of the partials in the batches handed over so far.
fn handed_over(rx: &mut mpsc::UnboundedReceiver<crate::store::FormedBatch>) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        let batch = tributary_core::batch::Batch::decode(&b.payload).unwrap();
        assert_eq!(batch.seq, b.seq);
        for p in &batch.partials {
            out.push((b.seq, p.window.start()));
        }
    }
    out
}

#[test]
fn batches_are_formed_only_while_connected_and_within_the_in_flight_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[outbox]\nbatch_max_partials = 1\n");
    let (mut e, metrics, mut rx, connected) = open_with_uplink(&cfg, 2);
    // Five windows of one series; the last reading's watermark closes the
    // first four (60 s windows, 5 s lateness).
    let t0 = t0();
    let points: Vec<(i64, i64)> = (0..5).map(|k| (t0 + k * 60_000 + 10_000, k)).collect();
    let key = SeriesKey::new("b", "dev", BTreeMap::new()).unwrap();
    e.handle(Input::Readings {
        key,
        quantum: Quantum::default(),
        points,
        done: None,
    });
    e.commit();
    assert_eq!(metrics.partials_emitted.get(), 4);
    assert_eq!(
        metrics.batches_formed.get(),
        0,
        "no batch while disconnected"
    );
    assert!(handed_over(&mut rx).is_empty());

    connected.send_replace(true);
    e.form_batches();
    let w = |k: i64| t0 + k * 60_000;
    assert_eq!(
        handed_over(&mut rx),
        [(1, w(0)), (2, w(1))],
        "two in flight, oldest first"
    );
    e.handle(Input::Confirmed(vec![1]));
    assert_eq!(
        handed_over(&mut rx),
        [(3, w(2))],
        "a confirmation makes room"
    );
    e.handle(Input::Confirmed(vec![1]));
    assert!(handed_over(&mut rx).is_empty(), "a repeated one does not");
    assert_eq!(metrics.batches_confirmed.get(), 1);

    connected.send_replace(false);
    e.handle(Input::Confirmed(vec![2]));
    assert!(
        handed_over(&mut rx).is_empty(),
        "nothing new during an outage"
    );
    assert_eq!(
        e.store.pending_partials().unwrap(),
        1,
        "it waits in the outbox"
    );
    drop((e, rx, connected));

    // After a restart the unconfirmed batch is handed over again first.
    let (mut e, _, mut rx, connected) = open_with_uplink(&cfg, 2);
    assert_eq!(handed_over(&mut rx), [(3, w(2))]);
    connected.send_replace(true);
    e.form_batches();
    assert_eq!(handed_over(&mut rx), [(4, w(3))]);
}

#[test]
fn refused_in_process_readings_are_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[limits]\nmax_series = 1\n");
    let (mut e, metrics) = open(&cfg);
    let readings = |metric: &str, n: i64| Input::Readings {
        key: SeriesKey::new(metric, "dev", BTreeMap::new()).unwrap(),
        quantum: Quantum::default(),
        points: (0..n).map(|i| (t0() + i, i)).collect(),
        done: None,
    };
    e.handle(readings("a", 2));
    e.handle(readings("b", 3));
    assert_eq!(metrics.readings_accepted.get(), 2);
    assert_eq!(metrics.rejected(crate::metrics::Reject::SeriesLimit), 3);
    assert_eq!(metrics.series.get(), 1);
}

/// Device frames whose ticks map outside the time bounds are refused by
/// reason and move no watermark: a tick past `i64` used to wrap to a time
/// near the device's boot and be accepted.
#[test]
fn device_frames_out_of_the_time_bounds_are_refused() {
    use tributary_core::frame::ReadingFrame;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (mut e, metrics) = open(&cfg);
    let sim = &SimDevice::all(&cfg.simulated)[0];
    let hello = sim.device().unwrap().hello(0);
    let (boot, channel) = (hello.boot, hello.channels[0].channel);
    let reading = |seq: u32, tick: u64| {
        (
            Message::Reading(ReadingFrame {
                boot,
                seq,
                channel,
                tick,
                value: 5,
            }),
            now_ms(),
        )
    };
    // A year after the device's start (its clock offset is t0, a day ago).
    let year: u64 = 366 * 86_400_000;
    e.handle(Input::Link {
        link: "sim:sim-0".into(),
        frames: vec![
            (Message::Hello(hello), now_ms()),
            reading(1, u64::MAX),
            reading(2, i64::MAX as u64 + 1),
            reading(3, year),
            reading(4, 1_000),
        ],
        reply: None,
        fixed_offset: Some(sim.start_ms),
        done: None,
    });
    assert_eq!(metrics.rejected(crate::metrics::Reject::TimeFuture), 3);
    assert_eq!(metrics.readings_accepted.get(), 1);
    let source = e.st.win.series(0).map(|s| s.key().device().to_string());
    assert_eq!(source.as_deref(), Some("sim-0"));
    // The device's watermark is the one accepted reading's time.
    let wm = (0..4).filter_map(|s| e.st.win.source_watermark(s)).max();
    assert_eq!(wm, Some(t0() + 1_000));
}

/// A store written before event times were bounded may hold a watermark
/// and closed windows stamped a year ahead by one bad reading; at start
/// they are brought back, so later readings land in open windows again
/// instead of being re-sent as revisions for ever.
#[test]
fn a_watermark_stored_far_ahead_is_brought_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let unbounded = "[limits]\nmax_future_ms = 9223372036854775807\n";
    let cfg = config(dir.path(), unbounded);
    let (mut e, _) = open(&cfg);
    let year = 366 * 86_400_000;
    let readings = |points: Vec<(i64, i64)>| Input::Readings {
        key: SeriesKey::new("b", "dev", BTreeMap::new()).unwrap(),
        quantum: Quantum::default(),
        points,
        done: None,
    };
    let now = now_ms();
    e.handle(readings(vec![(now - 120_000, 1), (now + year, 2)]));
    e.commit();
    let src = e.st.win.series(0).map(|_| 0).unwrap();
    assert_eq!(e.st.win.source_watermark(src), Some(now + year));
    drop(e);

    // Restarted with the default bounds (5 min ahead at most).
    let cfg = config(dir.path(), "");
    let (mut e, metrics) = open(&cfg);
    let latest = now_ms() + 300_000;
    assert!(e.st.win.source_watermark(src).unwrap() <= latest);
    // A reading now lands in an open window: no partial, no revision.
    let before = (
        metrics.partials_emitted.get(),
        metrics.revisions_emitted.get(),
    );
    e.handle(readings(vec![(now_ms(), 3)]));
    e.commit();
    assert_eq!(
        (
            metrics.partials_emitted.get(),
            metrics.revisions_emitted.get()
        ),
        before
    );
    assert!(e.st.win.open_readings() >= 1);
}

/// A store that fails (here: every write refused) holds every
/// acknowledgement and the commit that failed; input goes on being taken;
/// once a write succeeds, the same commit and everything since are
/// committed, acknowledged and sent, exactly.
#[test]
fn a_failing_store_holds_every_acknowledgement_and_retries_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (mut e, metrics, mut rx, connected) = open_with_uplink(&cfg, 4);
    connected.send_replace(true);
    let key = SeriesKey::new("b", "dev", BTreeMap::new()).unwrap();
    let t0 = t0();
    let readings = |points: Vec<(i64, i64)>| {
        let (tx, rx) = oneshot::channel();
        let input = Input::Readings {
            key: key.clone(),
            quantum: Quantum::default(),
            points,
            done: Some(tx),
        };
        (input, rx)
    };
    let (input, mut first) = readings(vec![(t0 + 1_000, 1), (t0 + 2_000, 2)]);
    e.handle(input);
    e.store.set_query_only(true);
    e.commit();
    assert!(first.try_recv().is_err(), "not acknowledged");
    assert_eq!(metrics.store_ok.get(), 0);
    assert_eq!(metrics.store_errors("cannot_write"), 1);
    let why = metrics.health.store_error().unwrap();
    assert!(why.contains("readonly"), "{why}");

    // Input goes on: this one closes the first window (60 s, 5 s lateness).
    let (input, mut second) = readings(vec![(t0 + 70_000, 4)]);
    e.handle(input);
    e.commit();
    assert_eq!(metrics.store_errors("cannot_write"), 2, "retried, failed");
    assert!(first.try_recv().is_err() && second.try_recv().is_err());
    assert_eq!(e.st.pending.held(), 2);
    assert!(handed_over(&mut rx).is_empty());

    e.store.set_query_only(false);
    e.commit();
    assert_eq!(first.try_recv(), Ok(()));
    assert_eq!(second.try_recv(), Ok(()));
    assert_eq!(metrics.store_ok.get(), 1);
    assert_eq!(metrics.health.store_error(), None);
    let mut sent = Vec::new();
    while let Ok(b) = rx.try_recv() {
        for p in tributary_core::batch::Batch::decode(&b.payload)
            .unwrap()
            .partials
        {
            sent.push((p.window.start(), p.summary.count(), p.summary.sum_ticks()));
        }
    }
    assert_eq!(sent, [(t0, 2, 3)], "the first window, exactly");
    drop((e, rx, connected));

    // The open window's reading was committed too.
    let (mut e, _, mut rx, connected) = open_with_uplink(&cfg, 4);
    assert_eq!(e.st.win.open_readings(), 1);
    connected.send_replace(true);
    let (input, _) = readings(vec![(t0 + 140_000, 8)]);
    e.handle(input);
    e.commit();
    let starts: Vec<i64> = handed_over(&mut rx).iter().map(|s| s.1).collect();
    assert_eq!(
        starts,
        [t0, t0 + 60_000],
        "the unconfirmed batch, then the new"
    );
}
