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

fn config(dir: &Path, extra: &str) -> Config {
    Config::from_toml(&format!(
        "agent_id = \"gw-1\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n\
         [simulated]\ndevices = 1\nwindows = 2\nstart_ms = 1000000\ndevice_window_ms = 1000\nreadings_per_window = 4\n\
         [tags]\nsite = \"berlin\"\ngateway = \"gw-1\"\n{extra}",
        dir.display().to_string()
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
        time: 1_000_500,
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
    })
    .unwrap();
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
    })
    .unwrap();
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
        points: vec![(1_000_500, 7)],
        done: Some(tx),
    })
    .unwrap();
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
    e.commit().unwrap();
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
        store,
        window: &cfg.window,
        commit: &cfg.store,
        limits: &cfg.limits,
        tags: cfg.global_tags(),
        outbound,
        metrics: metrics.clone(),
    })
    .unwrap();
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
    let t0 = 6_000_000;
    let points: Vec<(i64, i64)> = (0..5).map(|k| (t0 + k * 60_000 + 10_000, k)).collect();
    let key = SeriesKey::new("b", "dev", BTreeMap::new()).unwrap();
    e.handle(Input::Readings {
        key,
        quantum: Quantum::default(),
        points,
        done: None,
    })
    .unwrap();
    e.commit().unwrap();
    assert_eq!(metrics.partials_emitted.get(), 4);
    assert_eq!(
        metrics.batches_formed.get(),
        0,
        "no batch while disconnected"
    );
    assert!(handed_over(&mut rx).is_empty());

    connected.send_replace(true);
    e.form_batches().unwrap();
    let w = |k: i64| t0 + k * 60_000;
    assert_eq!(
        handed_over(&mut rx),
        [(1, w(0)), (2, w(1))],
        "two in flight, oldest first"
    );
    e.handle(Input::Confirmed(vec![1])).unwrap();
    assert_eq!(
        handed_over(&mut rx),
        [(3, w(2))],
        "a confirmation makes room"
    );
    e.handle(Input::Confirmed(vec![1])).unwrap();
    assert!(handed_over(&mut rx).is_empty(), "a repeated one does not");
    assert_eq!(metrics.batches_confirmed.get(), 1);

    connected.send_replace(false);
    e.handle(Input::Confirmed(vec![2])).unwrap();
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
    e.outbound.resume(&e.store, &e.st.metrics).unwrap();
    assert_eq!(handed_over(&mut rx), [(3, w(2))]);
    connected.send_replace(true);
    e.form_batches().unwrap();
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
        points: (0..n).map(|i| (1_000_000 + i, i)).collect(),
        done: None,
    };
    e.handle(readings("a", 2)).unwrap();
    e.handle(readings("b", 3)).unwrap();
    assert_eq!(metrics.readings_accepted.get(), 2);
    assert_eq!(metrics.rejected(crate::metrics::Reject::SeriesLimit), 3);
    assert_eq!(metrics.series.get(), 1);
}
