//! Hostile input on the local broker (issue #12), with the real parts: a
//! mosquitto, a third-party client (`rumqttc`) publishing as a device, the
//! real agent. Oversized messages are consumed, counted and never stall the
//! readings behind them; readings stamped outside the time bounds are
//! refused by reason and move no watermark; JSON nested 10,000 deep is
//! malformed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, MqttOptions, QoS};
use tributary_agent::config::Config;
use tributary_agent::{Agent, AgentHandle};
use tributary_core::topic;
use tributary_testkit::{Mosquitto, MosquittoOptions};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An agent subscribed to `broker` as its local broker, its uplink on the
/// same broker, with `env` overrides.
async fn agent(dir: &std::path::Path, broker: &Mosquitto, env: &[(&str, &str)]) -> AgentHandle {
    let port = broker.port().to_string();
    let sim = sim_config(0, 0, 0, 0);
    let mut vars = vec![
        ("TRIBUTARY_LOCAL_MQTT_ENABLED", "true"),
        ("TRIBUTARY_LOCAL_MQTT_PORT", port.as_str()),
    ];
    vars.extend_from_slice(env);
    let cfg = Config::from_toml_with_env(
        &agent_toml(dir, broker.port(), &sim, ""),
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metrics().local_subscribed.get() == 0 {
        assert!(Instant::now() < deadline, "the agent subscribes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}

/// The value of one sample line of the agent's `/metrics` text.
fn sample(agent: &AgentHandle, name: &str) -> f64 {
    let text = agent.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

fn rejected(agent: &AgentHandle, reason: &str) -> f64 {
    sample(
        agent,
        &format!("tributary_agent_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// Publishes `payloads` at QoS 1, in order, on device `device`'s readings
/// topic, as a device with a client of its own that sends any size.
async fn publish(port: u16, device: &str, payloads: Vec<Vec<u8>>) {
    let t = topic::readings(device);
    tokio::task::spawn_blocking(move || {
        let mut o = MqttOptions::new(format!("device-{}", fastrand::u32(..)), "127.0.0.1", port);
        o.set_max_packet_size(128 << 20, 128 << 20);
        let (client, mut conn) = Client::new(o, 100);
        std::thread::spawn(move || for _ in conn.iter() {});
        for p in payloads {
            client.publish(&t, QoS::AtLeastOnce, false, p).unwrap();
        }
    })
    .await
    .unwrap();
}

/// A JSON reading of metric `temp`.
fn reading(time: i64, value: i64) -> Vec<u8> {
    format!(r#"{{"v":1,"metric":"temp","time":{time},"value":{value}}}"#).into_bytes()
}

/// Waits until `cond` holds (up to `secs`), polling.
async fn wait(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1 MiB and 64 MiB QoS 1 messages made the agent's local MQTT connection
/// drop and reconnect again and again (its client refused packets over
/// twice the payload limit), readings behind them waited 30 s and more and
/// no `oversized` was counted. They must be acknowledged in order, counted,
/// and the readings behind them accepted at once, on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_consumed_counted_and_never_stall_the_readings_behind() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let _collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &broker, &[]).await;
    let port = broker.port();
    let now = now_ms();
    let started = Instant::now();
    let mut payloads: Vec<Vec<u8>> = vec![vec![b' '; 1 << 20], vec![b' '; 64 << 20]];
    payloads.extend((0..20).map(|i| reading(now + i, i)));
    publish(port, "big", payloads).await;
    wait(
        20,
        "the readings behind the oversized messages are accepted",
        || agent.metrics().readings_accepted.get() == 20,
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the readings behind waited {took:?}"
    );
    assert_eq!(rejected(&agent, "oversized"), 2.0);
    wait(10, "every message is acknowledged", || {
        agent.metrics().local_unacked.get() == 0
    })
    .await;
    assert_eq!(
        sample(&agent, "tributary_agent_local_mqtt_connects_total"),
        1.0,
        "one connection, never dropped"
    );
    agent.shutdown().await.unwrap();
    // The broker holds nothing unacknowledged for the agent: a new agent on
    // the same session gets no redelivery of the oversized messages.
    // A marker published now arrives after any redelivery (one session, in
    // order), so once it is accepted nothing more can come.
    let again = self::agent(dir.path(), &broker, &[]).await;
    publish(port, "big", vec![reading(now, 7)]).await;
    wait(20, "the marker is accepted", || {
        again.metrics().readings_accepted.get() == 1
    })
    .await;
    assert_eq!(rejected(&again, "oversized"), 0.0, "nothing redelivered");
    again.shutdown().await.unwrap();
}

/// A reading stamped far in the future raised its device's watermark for
/// good, so every later window closed at once (here: sent before its time).
/// Readings outside `[limits] max_future_ms` / `max_age_ms` are refused by
/// reason and move no watermark; the extremes of `i64` are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_outside_the_time_bounds_are_refused_and_move_no_watermark() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let _collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    // One-minute windows that close only by the watermark (no idle close
    // within the test), 5 s lateness.
    let agent = agent(
        dir.path(),
        &broker,
        &[
            ("TRIBUTARY_WINDOW_WIDTH_MS", "60000"),
            ("TRIBUTARY_WINDOW_ALLOWED_LATENESS_MS", "5000"),
            ("TRIBUTARY_WINDOW_IDLE_CLOSE_MS", "600000"),
        ],
    )
    .await;
    let port = broker.port();
    let now = now_ms();
    const YEAR: i64 = 366 * 86_400_000;
    let mut payloads: Vec<Vec<u8>> = [now + YEAR, i64::MAX, i64::MAX - 59_999]
        .into_iter()
        .chain([now - 10 * YEAR, i64::MIN, i64::MIN + 1])
        .map(|time| reading(time, 1))
        .collect();
    // A batch mixing good and bad times: the good ones apply.
    payloads.push(
        format!(
            r#"{{"v":1,"readings":[{{"metric":"temp","time":{},"value":2}},{{"metric":"temp","time":{},"value":3}}]}}"#,
            now,
            now + YEAR
        )
        .into_bytes(),
    );
    payloads.extend((0..10).map(|i| reading(now + i, i)));
    publish(port, "clocky", payloads).await;
    wait(20, "the good readings are accepted", || {
        agent.metrics().readings_accepted.get() >= 11
    })
    .await;
    wait(10, "every message is acknowledged", || {
        agent.metrics().local_unacked.get() == 0
    })
    .await;
    assert_eq!(agent.metrics().readings_accepted.get(), 11);
    assert_eq!(rejected(&agent, "time_future"), 4.0);
    assert_eq!(rejected(&agent, "time_past"), 3.0);
    // The good readings' window stays open: nothing moved the watermark
    // past its end (+ lateness). A commit now flushes whatever is due.
    agent.sync().await;
    assert_eq!(
        agent.metrics().partials_emitted.get(),
        0,
        "a window closed before its time:\n{}",
        agent.metrics().render()
    );
    agent.shutdown().await.unwrap();
}

/// JSON nested 10,000 deep, in every place a reading message has, is
/// refused as malformed and the readings behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_10000_deep_is_malformed() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let _collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &broker, &[]).await;
    let port = broker.port();
    let now = now_ms();
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let payloads = [
        deep.clone(),
        format!(r#"{{"v":1,"metric":"t","time":{now},"value":1,"x":{objects}}}"#),
        format!(r#"{{"v":1,"boot":1,"seq":1,"readings":{deep}}}"#),
        format!(r#"{{"v":1,"metric":"t","time":{now},"value":1,"tags":{objects}}}"#),
        format!(r#"{{"v":1,"metric":"t","time":{now},"value":5}}"#),
    ];
    publish(port, "deep", payloads.map(String::into_bytes).to_vec()).await;
    wait(20, "the reading behind is accepted", || {
        agent.metrics().readings_accepted.get() == 1
    })
    .await;
    assert_eq!(rejected(&agent, "malformed_json"), 4.0);
    assert_eq!(agent.metrics().frames_duplicate.get(), 0);
    agent.shutdown().await.unwrap();
}
