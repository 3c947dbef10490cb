//! Engine tests: the global tags reach the key of every kind of source, also
//! after a restart, and match the simulated devices' ground truth.
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
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&cfg.db_path(), &cfg.store, &cfg.outbox).unwrap();
    let (batches, _) = mpsc::unbounded_channel();
    let (_, connected) = watch::channel(false);
    let e = Engine::open(Parts {
        store,
        window: &cfg.window,
        commit: &cfg.store,
        limits: &cfg.limits,
        tags: cfg.global_tags(),
        outbound: Outbound::new(&cfg.agent_id, cfg.uplink.encoding, 1, batches, connected),
        metrics: metrics.clone(),
    })
    .unwrap();
    (e, metrics)
}

fn keys(e: &Engine) -> BTreeSet<String> {
    e.registry.keys().map(|(k, _)| k.to_string()).collect()
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
    for (key, id) in e.registry.keys() {
        assert_eq!(
            e.win.series(id).unwrap().key(),
            key,
            "the windower holds the tagged key"
        );
    }
    // The ground truth of the simulated device names the same series.
    let truth: BTreeSet<String> =
        simulated::agent_truth(&cfg.simulated, &cfg.global_tags(), &cfg.limits)
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
    assert_eq!(e.registry.len(), want.len());
    let dev = e.devices.get("sim-0", sim.boot()).unwrap();
    let restored: BTreeSet<String> = dev
        .channels()
        .iter()
        .map(|&(_, id)| e.win.series(id).unwrap().key().to_string())
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
