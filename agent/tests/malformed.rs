//! Devices on the local broker: valid JSON readings flow while every kind of
//! bad input is refused and counted; a redelivered (boot, seq) is applied once.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, MqttOptions, QoS};
use tributary_agent::config::Config;
use tributary_agent::metrics::Reject;
use tributary_agent::Agent;
use tributary_core::topic;
use tributary_testkit::{Mosquitto, MosquittoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_counted_while_valid_traffic_flows() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(0, 0, 0, 0);
    let port = broker.port().to_string();
    let cfg = Config::from_toml_with_env(
        &agent_toml(dir.path(), broker.port(), &sim, ""),
        [
            ("TRIBUTARY_LOCAL_MQTT_ENABLED", "true"),
            ("TRIBUTARY_LOCAL_MQTT_PORT", port.as_str()),
            ("TRIBUTARY_LIMITS_MAX_PAYLOAD_BYTES", "2000"),
            ("TRIBUTARY_LIMITS_MAX_TAGS", "2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let subscribed = agent.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscribed.local_subscribed.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(subscribed.local_subscribed.get(), 1);
    let bp = broker.port();
    tokio::task::spawn_blocking(move || {
        let (client, mut conn) = Client::new(MqttOptions::new("test-device", "127.0.0.1", bp), 100);
        std::thread::spawn(move || for _ in conn.iter() {});
        let t = topic::readings("d1");
        let pubq =
            |topic: &str, p: Vec<u8>| client.publish(topic, QoS::AtLeastOnce, false, p).unwrap();
        for i in 0..20 {
            pubq(
                &t,
                format!(
                    r#"{{"v":1,"metric":"temp","time":{},"value":{}.5}}"#,
                    now + i,
                    i
                )
                .into_bytes(),
            );
        }
        let batch: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"metric":"hum","time":{},"value":{i}}}"#, now + i))
            .collect();
        let batch = format!(
            r#"{{"v":1,"boot":1,"seq":7,"readings":[{}]}}"#,
            batch.join(",")
        );
        pubq(&t, batch.clone().into_bytes());
        pubq(&t, batch.into_bytes()); // redelivery: applied once
        pubq(&t, b"{not json".to_vec());
        // Each bad message is stamped now, so it is refused for its one fault.
        pubq(
            &t,
            format!(r#"{{"v":2,"metric":"temp","time":{now},"value":1}}"#).into_bytes(),
        );
        pubq(
            &t,
            format!(r#"{{"v":1,"metric":"temp","time":{now},"value":"NaN"}}"#).into_bytes(),
        );
        pubq(
            &t,
            format!(r#"{{"v":1,"metric":"temp","time":{now},"value":1e300}}"#).into_bytes(),
        );
        pubq(&t, vec![b' '; 3000]);
        pubq(
            &t,
            format!(
                r#"{{"v":1,"metric":"temp","time":{now},"value":1,"tags":{{"a":"1","b":"2","c":"3"}}}}"#
            )
            .into_bytes(),
        );
        pubq(
            &t,
            format!(r#"{{"v":1,"metric":"9bad","time":{now},"value":1}}"#).into_bytes(),
        );
        // Stamped a year ahead, and long ago: refused by their time.
        for time in [now + 366 * 86_400_000, 1] {
            pubq(
                &t,
                format!(r#"{{"v":1,"metric":"temp","time":{time},"value":1}}"#).into_bytes(),
            );
        }
        pubq(&topic::summaries("d1"), vec![1, 2, 3, 4, 5, 6, 7, 0]);
        pubq("tributary/v1/devices/d1/other", b"x".to_vec());
        std::thread::sleep(Duration::from_millis(300));
    })
    .await
    .unwrap();
    let m = agent.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.counters().rejected < 11 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (r, n) in [
        (Reject::MalformedJson, 2),
        (Reject::UnknownVersion, 1),
        (Reject::BadValue, 1),
        (Reject::Oversized, 1),
        (Reject::TooManyTags, 1),
        (Reject::BadKey, 1),
        (Reject::CorruptFrame, 1),
        (Reject::BadTopic, 1),
        (Reject::TimeFuture, 1),
        (Reject::TimePast, 1),
    ] {
        assert_eq!(m.rejected(r), n, "{r:?}");
    }
    let (n, collector) = tokio::task::spawn_blocking(move || {
        (collector.wait_for(30, Duration::from_secs(20)), collector)
    })
    .await
    .unwrap();
    assert_eq!(n, 30);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        collector.readings(),
        30,
        "the redelivered batch counted once"
    );
    assert_eq!(m.counters().readings_accepted, 30);
    agent.shutdown().await.unwrap();
}
