//! Ingest against a real mosquitto, over MQTT 3.1.1 and MQTT 5: valid
//! batches (JSON and binary) are applied once and confirmed to their agent
//! after the commit; a redelivered batch is confirmed again but changes
//! nothing; garbage, a batch on another agent's topic and an oversized
//! payload are refused and counted while the valid traffic goes on. Two
//! instances in one MQTT 5 shared-subscription group each get a share and
//! every batch is applied exactly once. With a password file and ACL on the
//! broker the collector logs in with its credentials; a wrong password is
//! refused, logged clearly, counted and retried without ingest giving up.
//! Batches published while the collector is away wait in its persistent
//! session. Over TLS the broker's certificate is verified against the
//! configured CA (certificates made by `openssl` for the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tributary_collector::ingest::{IngestConfig, Password, Protocol, Refused, TlsOptions};
use tributary_collector::store::{Query, Refusal};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_sim::judge::judge_readings;
use tributary_testkit::{Mosquitto, MosquittoOptions};

use mqtt_common::harness::{subscribed, Agent, Collector};
use mqtt_common::{secure_broker, tls_broker, Logs};

fn batch(agent: &str, seq: u64, value: i64) -> Batch {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(1_700_000_000_000 + seq as i64, value).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::containing(1_700_000_000_000, Width::new(60_000).unwrap()),
        summary: s,
    };
    Batch::new(agent, seq, 1_700_000_000_000, vec![partial])
}

/// Panics, naming the caller's line, unless `windows` is one window holding
/// exactly the readings of `batch(_, seq, 1000 + seq)` for every `seq` in
/// `seqs`, as the oracle computes them from those raw readings (not a
/// `Summary` built by the code under test).
#[track_caller]
fn assert_holds(windows: &[Summary], seqs: impl IntoIterator<Item = u64>) {
    let readings: Vec<(i64, i64)> = seqs
        .into_iter()
        .map(|seq| (1_700_000_000_000 + seq as i64, 1000 + seq as i64))
        .collect();
    assert_eq!(windows.len(), 1, "one window: {windows:?}");
    let problems = judge_readings(&windows[0], -3, &readings);
    assert!(problems.is_empty(), "{problems:?}");
}

async fn batches_apply_once_and_are_confirmed_after_commit(protocol: Protocol) {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = Collector::start(IngestConfig {
        port: broker.port(),
        protocol,
        client_id: "collector-test".into(),
        max_payload_bytes: 64 * 1024,
        ..IngestConfig::default()
    });
    let agent = Agent::connect("agent-a", broker.port(), None);
    subscribed(&collector.counters).await;

    for seq in 0..5 {
        let enc = if seq % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Binary
        };
        agent.publish(batch("agent-a", seq, 1000 + seq as i64).encode(enc));
    }
    agent.publish(b"{not json".to_vec());
    agent.publish(batch("agent-b", 9, 1).encode(Encoding::Json));
    agent.publish(vec![b' '; 70 * 1024]);
    // Far over the limit too: refused the same way, never a reconnect loop.
    agent.publish(vec![b' '; 600 * 1024]);
    // A redelivery of seq 2.
    agent.publish(batch("agent-a", 2, 1002).encode(Encoding::Json));

    let counters = &collector.counters;
    let seqs = agent.confirmed(6).await;
    assert_eq!(
        seqs.len(),
        6,
        "five batches and one redelivery confirmed: {seqs:?}\n{}",
        counters.render()
    );
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..5).collect()
    );
    assert_eq!(counters.batches_new.get(), 5);
    assert_eq!(counters.batches_duplicate.get(), 1);
    assert_eq!(counters.refused(Refused::Malformed), 1);
    assert_eq!(counters.refused(Refused::AgentMismatch), 1);
    assert_eq!(counters.refused(Refused::Oversized), 2);
    // Confirmed means committed: the store holds exactly the five batches.
    assert_holds(&collector.windows().await, 0..5);

    // A batch that cannot merge into the stored window (another quantum) is
    // refused and counted; the valid batch next to it still applies.
    let mut poison = batch("agent-a", 10, 7);
    let mut other = Summary::new(Quantum::new(-1).unwrap());
    other.insert(1_700_000_000_000, 7).unwrap();
    poison.partials[0].summary = other;
    agent.publish(poison.encode(Encoding::Json));
    agent.publish(batch("agent-a", 11, 1011).encode(Encoding::Json));
    agent.confirmed(8).await;
    assert_eq!(
        counters.refused(Refused::Unmergeable),
        1,
        "{}",
        counters.render()
    );
    assert_eq!(counters.batches_new.get(), 6);
    assert_holds(&collector.windows().await, (0..5).chain([11]));
    // Durably, for its agent: one partial of one reading.
    let agents = collector.store.agents().await.unwrap();
    assert_eq!(
        agents[0].refused.get("unmergeable"),
        Some(&Refusal {
            partials: 1,
            readings: 1
        }),
        "{agents:?}"
    );
    let metrics = counters.render();
    assert!(
        metrics.contains(&format!(
            "tributary_collector_mqtt_connected{{protocol=\"{protocol}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("tributary_collector_mqtt_connects_total{result=\"ok\"} 1"));
    collector.stop().await;
    let _ = agent.client.disconnect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_batches_apply_once_and_are_confirmed_after_commit() {
    batches_apply_once_and_are_confirmed_after_commit(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_batches_apply_once_and_are_confirmed_after_commit() {
    batches_apply_once_and_are_confirmed_after_commit(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_shared_subscription_splits_batches_and_applies_each_once() {
    const N: u64 = 200;
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let instance = |i: u32| {
        Collector::start(IngestConfig {
            port: broker.port(),
            protocol: Protocol::V5,
            client_id: format!("collector-{i}"),
            share_group: Some("collectors".into()),
            ..IngestConfig::default()
        })
    };
    let (one, two) = (instance(1), instance(2));
    let agent = Agent::connect("agent-a", broker.port(), None);
    subscribed(&one.counters).await;
    subscribed(&two.counters).await;

    for seq in 0..N {
        agent.publish(batch("agent-a", seq, 1000 + seq as i64).encode(Encoding::Binary));
    }
    let seqs = agent.confirmed(N as usize).await;
    let news = [&one, &two].map(|c| c.counters.batches_new.get());
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..N).collect(),
        "every batch confirmed; applied per instance {news:?}"
    );
    assert_eq!(seqs.len(), N as usize, "each confirmed once");
    assert_eq!(news[0] + news[1], N, "each batch applied by one instance");
    assert!(
        news[0] > 0 && news[1] > 0,
        "both instances got a share: {news:?}"
    );
    for c in [&one, &two] {
        assert_eq!(c.counters.batches_duplicate.get(), 0);
    }
    // The two stores together hold every reading exactly once.
    let mut merged = Summary::new(Quantum::new(-3).unwrap());
    for c in [&one, &two] {
        for w in c.windows().await {
            merged.merge(&w).unwrap();
        }
    }
    assert_holds(&[merged], 0..N);
    one.stop().await;
    two.stop().await;
}

async fn logs_in_and_a_wrong_password_is_retried(protocol: Protocol) {
    let (logs, _guard) = Logs::capture();
    let (_broker, port) = secure_broker();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("mqtt-password");
    std::fs::write(&pw_file, "collector-pw\n").unwrap();
    let cfg = IngestConfig {
        port,
        protocol,
        client_id: "collector-secure".into(),
        username: Some("collector".into()),
        password: Some(Password::File(pw_file)),
        ..IngestConfig::default()
    };

    // A wrong password: refused, counted, retried; ingest keeps running.
    let wrong = Collector::start(IngestConfig {
        client_id: "collector-wrong".into(),
        password: Some(Password::Value("not-it".into())),
        ..cfg.clone()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while wrong.counters.connects_refused.get() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = wrong.counters.render();
    assert!(
        wrong.counters.connects_refused.get() >= 2,
        "refused and retried: {metrics}"
    );
    assert_eq!(wrong.counters.connects_ok.get(), 0);
    assert!(metrics.contains("tributary_collector_mqtt_connected{protocol="));
    assert!(!wrong.task.is_finished(), "ingest keeps retrying");
    let text = logs.text();
    assert!(
        text.contains("ERROR")
            && text.contains("the broker refused the login")
            && text.contains("check [mqtt] username and password")
            && text.contains("collector-wrong"),
        "a clear error names the cause and the client: {text}"
    );
    assert!(!text.contains("not-it"), "the log never shows the password");

    // The right password (from a file): batches flow both ways.
    let good = Collector::start(cfg);
    let agent = Agent::connect("agent-a", port, Some(("agent-a", "agent-pw")));
    subscribed(&good.counters).await;
    for seq in 0..3 {
        agent.publish(batch("agent-a", seq, 1000 + seq as i64).encode(Encoding::Json));
    }
    let seqs = agent.confirmed(3).await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..3).collect(),
        "{}",
        good.counters.render()
    );
    assert_holds(&good.windows().await, 0..3);
    assert_eq!(wrong.counters.batches_new.get(), 0);
    wrong.stop().await;
    good.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_1_logs_in_and_a_wrong_password_is_retried() {
    logs_in_and_a_wrong_password_is_retried(Protocol::V311).await;
}

#[tokio::test]
async fn mqtt_5_logs_in_and_a_wrong_password_is_retried() {
    logs_in_and_a_wrong_password_is_retried(Protocol::V5).await;
}

/// Batches published while the collector is away wait in its persistent
/// session (3.1.1: clean session off; 5: clean start off and a session
/// expiry interval) and are applied when it is back.
async fn the_session_outlives_a_restart(protocol: Protocol) {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cfg = IngestConfig {
        port: broker.port(),
        protocol,
        client_id: "collector-persistent".into(),
        share_group: Some("collectors".into()),
        session_expiry_s: 600,
        ..IngestConfig::default()
    };
    let first = Collector::start(cfg.clone());
    subscribed(&first.counters).await;
    first.stop().await;

    let agent = Agent::connect("agent-a", broker.port(), None);
    for seq in 0..4 {
        agent.publish(batch("agent-a", seq, 1000 + seq as i64).encode(Encoding::Json));
    }
    // Queued at the broker (PUBACKed) before the collector is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.pubacks.load(Relaxed) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.pubacks.load(Relaxed), 4);
    let back = Collector::start(cfg);
    let seqs = agent.confirmed(4).await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..4).collect(),
        "queued batches delivered after the restart: {}",
        back.counters.render()
    );
    assert_eq!(back.counters.batches_new.get(), 4);
    back.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_session_outlives_a_restart() {
    the_session_outlives_a_restart(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_session_outlives_a_restart() {
    the_session_outlives_a_restart(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_over_tls_verifies_the_broker_certificate() {
    let (_broker, plain_port, tls_port, ca) = tls_broker();
    for (protocol, name) in [(Protocol::V311, "agent-v311"), (Protocol::V5, "agent-v5")] {
        // Trusting only the system's roots, the test CA's certificate is
        // refused: TLS verifies, it does not merely encrypt.
        let untrusting = Collector::start(IngestConfig {
            port: tls_port,
            protocol,
            client_id: format!("collector-untrusting-{protocol}"),
            tls: Some(TlsOptions { ca_file: None }),
            ..IngestConfig::default()
        });
        let collector = Collector::start(IngestConfig {
            port: tls_port,
            protocol,
            client_id: format!("collector-tls-{protocol}"),
            tls: Some(TlsOptions {
                ca_file: Some(ca.clone()),
            }),
            ..IngestConfig::default()
        });
        let agent = Agent::connect(name, plain_port, None);
        subscribed(&collector.counters).await;
        for seq in 0..3 {
            agent.publish(batch(name, seq, 1000 + seq as i64).encode(Encoding::Json));
        }
        let seqs = agent.confirmed(3).await;
        assert_eq!(
            seqs.iter().copied().collect::<BTreeSet<_>>(),
            (0..3).collect(),
            "{protocol}: {}",
            collector.counters.render()
        );
        assert_holds(&collector.windows().await, 0..3);
        let u = &untrusting.counters;
        assert!(u.connects_failed.get() >= 1, "{}", u.render());
        assert_eq!(u.connects_ok.get(), 0);
        assert_eq!(u.batches_new.get(), 0);
        untrusting.stop().await;
        collector.stop().await;
        let _ = agent.client.disconnect();
    }
}

/// A burst far larger than the MQTT client's request queue: every batch is
/// applied, confirmed and acknowledged (a restarted collector with the same
/// session gets nothing redelivered). Before PUBACKs waited in an outbox,
/// ingest could block on the full queue it alone drains and stop for good.
async fn a_burst_is_applied_and_acknowledged_completely(protocol: Protocol) {
    const N: u64 = 4000;
    let broker = Mosquitto::start(MosquittoOptions {
        max_inflight_messages: Some(0), // no limit: the broker floods
        max_queued_messages: Some(100_000),
        ..MosquittoOptions::default()
    })
    .unwrap();
    let cfg = IngestConfig {
        port: broker.port(),
        protocol,
        client_id: "collector-burst".into(),
        group_batches: 64,
        ..IngestConfig::default()
    };
    let collector = Collector::start(cfg.clone());
    let agent = Agent::connect("agent-a", broker.port(), None);
    subscribed(&collector.counters).await;
    for seq in 0..N {
        agent.publish(batch("agent-a", seq, 1000 + seq as i64).encode(Encoding::Binary));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while collector.counters.batches_new.get() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        collector.counters.batches_new.get(),
        N,
        "{}",
        collector.counters.render()
    );
    let confirmed: BTreeSet<u64> = agent.confirmed(N as usize).await.into_iter().collect();
    assert_eq!(confirmed, (0..N).collect());
    assert_holds(&collector.windows().await, 0..N);
    collector.stop().await;

    let again = Collector::start(cfg);
    subscribed(&again.counters).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        again.counters.batches_duplicate.get(),
        0,
        "every message was acknowledged before the first collector stopped"
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_a_burst_is_applied_and_acknowledged_completely() {
    a_burst_is_applied_and_acknowledged_completely(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_a_burst_is_applied_and_acknowledged_completely() {
    a_burst_is_applied_and_acknowledged_completely(Protocol::V5).await;
}
