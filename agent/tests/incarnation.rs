//! The agent's batches name its database's incarnation, and only a
//! confirmation of that incarnation releases them: one for another
//! incarnation of the same agent id (its replaced database's, or another
//! gateway misconfigured with its id) names other batches, and deleting
//! these on its word would lose them. With a real mosquitto, the agent
//! keeps every batch such a confirmation names, and the stand-in collector
//! that comes later receives every reading exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_core::batch::{Batch, Confirm};
use tributary_core::{topic, Incarnation};
use tributary_testkit::{Mosquitto, MosquittoOptions};

/// Waits (up to 20 s) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_confirmation_of_its_own_incarnation_releases_a_batch() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    // A listener (not a collector: it confirms nothing) learns the agent's
    // incarnation from its first batch.
    let (client, mut conn) = Client::new(
        MqttOptions::new("listener", "127.0.0.1", broker.port()),
        100,
    );
    client
        .subscribe(topic::partials("gw-test"), QoS::AtLeastOnce)
        .unwrap();
    let (seen, batches) = mpsc::channel::<Batch>();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(b) = Batch::decode(&p.payload) {
                        let _ = seen.send(b);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(2, 30, start_ms(5000), 0);
    let cfg = Config::from_toml(&agent_toml(dir.path(), broker.port(), &sim, "")).unwrap();
    let expected: u64 = truth(&sim, 5000).values().map(|v| v.0).sum();
    let agent = Agent::start(cfg).await.unwrap();
    let first =
        tokio::task::spawn_blocking(move || batches.recv_timeout(Duration::from_secs(30)).unwrap())
            .await
            .unwrap();
    assert_eq!(
        first.seq, 1,
        "the first batch published is the first formed"
    );
    let ours = first.incarnation;
    assert_ne!(ours, Incarnation::default(), "a random incarnation");
    assert_eq!(first.first_unconfirmed, 1, "nothing confirmed yet");
    let metrics = agent.metrics().clone();
    until("batches in flight", || metrics.batches_sent.get() >= 2).await;

    // A confirmation of every sequence the agent could have used, but for
    // another incarnation; then one of the agent's own batch 1. MQTT keeps
    // their order, so once the second has released batch 1 the first was
    // handled too.
    let acks = topic::acks("gw-test");
    let other = Incarnation::new(ours.id() ^ 1);
    let forged = Confirm::new("gw-test", other, (1..=1000).collect());
    client
        .publish(&acks, QoS::AtLeastOnce, false, forged.encode())
        .unwrap();
    let own = Confirm::new("gw-test", ours, vec![1]);
    client
        .publish(&acks, QoS::AtLeastOnce, false, own.encode())
        .unwrap();
    until("batch 1 released", || metrics.batches_confirmed.get() >= 1).await;
    assert_eq!(
        metrics.batches_confirmed.get(),
        1,
        "only its own incarnation's confirmation released a batch"
    );

    // The collector comes: every reading arrives, each once — batch 1's
    // too, which the test took for the collector's and is not resent: its
    // readings are the only ones missing.
    let collector = TestCollector::start(broker.port());
    let one: u64 = first.readings();
    let got = tokio::task::spawn_blocking(move || {
        let n = collector.wait_for(expected - one, Duration::from_secs(60));
        (n, collector)
    })
    .await
    .unwrap();
    assert_eq!(got.0, expected - one);
    agent.shutdown().await.unwrap();
    let _ = client.disconnect();
}
