//! The `mqtt` path: JSON batches published to a real mosquitto (started
//! here, or one already running), read by the agent's local MQTT source
//! with PUBACKs after commit.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, MqttOptions, QoS};

use super::rss::RssLog;
use super::{base_config, BenchArgs, BrokerSettings};
use crate::agent::Agent;
use crate::config::Config;
use crate::metrics::Metrics;

/// The first event time published.
const BASE_MS: i64 = 1_700_000_000_000;

/// Runs the `mqtt` path in `dir`.
pub(super) async fn run(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let (broker, port) = match args.mqtt_port {
        Some(p) => (None, p),
        None => {
            let (b, p) = start_broker(args, dir)?;
            (Some(b), p)
        }
    };
    let extra = format!(
        "[local_mqtt]\nenabled = true\nport = {port}\nclient_id = \"bench-agent-{}\"\n[limits]\nmax_payload_bytes = 1048576\n{}",
        std::process::id(),
        super::UNBOUNDED_TIMES,
    );
    let config = Config::from_toml(&base_config("bench-mqtt", dir, args, &extra))
        .context("bench config (mqtt)")?;
    let agent = Agent::start(config).await?;
    let m = agent.metrics().clone();
    // Let it connect and subscribe.
    let until = Instant::now() + Duration::from_secs(5);
    while m.local_subscribed.get() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        m.local_subscribed.get() == 1,
        "the agent did not subscribe to the local broker within 5 s"
    );
    let mut o = MqttOptions::new(
        format!("bench-publisher-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    print_header(args, port);
    let mut rss = RssLog::new(args.rss_every);
    let start = Instant::now();
    let sent = publish(args, &client, &m, &mut rss, start).await?;
    let published_for = start.elapsed().as_secs_f64();
    let last_progress = wait_committed(&m, sent).await;
    agent.sync().await;
    let elapsed = last_progress.duration_since(start).as_secs_f64();
    let accepted = m.readings_accepted.get();
    println!("  readings published {sent} (in {published_for:.2} s)");
    println!(
        "  readings committed {accepted} ({:.2} % lost)",
        100.0 * sent.saturating_sub(accepted) as f64 / sent.max(1) as f64
    );
    if let Some(b) = &broker {
        println!(
            "  broker log lines \"messages are being dropped\": {}",
            b.dropped_lines()
        );
    }
    println!("  duplicates         {}", m.frames_duplicate.get());
    println!("  rejected           {}", m.counters().rejected);
    println!("  commits            {}", m.commits());
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    rss.report();
    let _ = client.disconnect().await;
    poller.abort();
    agent.shutdown().await?;
    drop(broker);
    Ok(())
}

fn print_header(args: &BenchArgs, port: u16) {
    println!(
        "mqtt: JSON readings through mosquitto at 127.0.0.1:{port} ({}), {} readings per message, {} devices × 4 metrics, {}",
        match (args.mqtt_port, args.broker) {
            (Some(_), _) => "already running",
            (None, BrokerSettings::Documented) => "documented settings: max_inflight_messages 1000, max_queued_messages 100000",
            (None, BrokerSettings::Default) => "mosquitto defaults: max_inflight_messages 20, max_queued_messages 1000",
        },
        args.per_message,
        devices(args),
        if args.mqtt_rate == 0 {
            "closed loop (≤ 200 messages outstanding)".to_string()
        } else {
            format!("open loop at {} readings/s", args.mqtt_rate)
        }
    );
}

/// Publishing devices: 4 series each.
fn devices(args: &BenchArgs) -> usize {
    (args.series / 4).max(1)
}

/// One JSON batch (message `seq` of a device, readings from `BASE_MS + t`).
fn message(per_message: usize, seq: u64, t: i64, rng: &mut fastrand::Rng) -> String {
    let mut body = String::with_capacity(per_message * 64);
    body.push_str(&format!(
        "{{\"v\":1,\"boot\":1,\"seq\":{seq},\"readings\":["
    ));
    for k in 0..per_message {
        if k > 0 {
            body.push(',');
        }
        let ch = k % 4;
        let time = BASE_MS + t + (k / 4) as i64;
        body.push_str(&format!(
            "{{\"metric\":\"bench_{ch}\",\"time\":{time},\"value\":{:.2}}}",
            20.0 + rng.f64() * 5.0
        ));
    }
    body.push_str("]}");
    body
}

/// Publishes for `--seconds`, closed loop (at most 200 messages ahead of
/// what the agent accepted) or open loop at `--mqtt-rate`; returns the
/// readings published.
async fn publish(
    args: &BenchArgs,
    client: &AsyncClient,
    m: &Arc<Metrics>,
    rss: &mut RssLog,
    start: Instant,
) -> anyhow::Result<u64> {
    let deadline = start + Duration::from_secs(args.seconds);
    let (mut sent, mut seq, mut t) = (0u64, 0u64, 0i64);
    let mut rng = fastrand::Rng::with_seed(11);
    let window = 200 * args.per_message as u64;
    'publish: while Instant::now() < deadline {
        for d in 0..devices(args) {
            if args.mqtt_rate == 0 {
                while sent.saturating_sub(m.readings_accepted.get()) > window {
                    if Instant::now() >= deadline {
                        break 'publish;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                let due = start + Duration::from_secs_f64(sent as f64 / args.mqtt_rate as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() >= deadline {
                    break 'publish;
                }
            }
            let body = message(args.per_message, seq, t, &mut rng);
            let topic = tributary_core::topic::readings(&format!("dev-{d}"));
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .context("publish")?;
            sent += args.per_message as u64;
            if Instant::now() >= rss.next {
                println!(
                    "  [mqtt] t={:>6.1} s  agent: {} messages awaiting PUBACK",
                    start.elapsed().as_secs_f64(),
                    m.local_unacked.get()
                );
            }
            rss.poll();
        }
        seq += 1;
        t += (args.per_message / 4) as i64;
    }
    Ok(sent)
}

/// Waits until the agent has committed all `sent` readings, or made no
/// progress for 3 s; returns when it last made progress.
async fn wait_committed(m: &Metrics, sent: u64) -> Instant {
    let (mut last, mut last_progress) = (0u64, Instant::now());
    loop {
        let now_accepted = m.readings_accepted.get();
        if now_accepted > last {
            (last, last_progress) = (now_accepted, Instant::now());
        }
        if now_accepted >= sent || last_progress.elapsed() > Duration::from_secs(3) {
            return last_progress;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A mosquitto started for the bench, killed on drop.
struct Broker {
    child: Child,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// The broker's "messages are being dropped" log lines so far.
    fn dropped_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("messages are being dropped"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Starts mosquitto on a free port with the settings of `--broker`.
fn start_broker(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<(Broker, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let limits = match args.broker {
        // As config/mosquitto.conf documents for a gateway's local broker.
        BrokerSettings::Documented => "max_inflight_messages 1000\nmax_queued_messages 100000\n",
        BrokerSettings::Default => "",
    };
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{limits}log_dest stderr\nlog_type warning\nlog_type error\nlog_type notice\n"),
    )?;
    let log = dir.join("mosquitto.log");
    let child = Command::new(&args.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", args.mosquitto.display()))?;
    let broker = Broker { child, log };
    let until = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < until, "mosquitto did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((broker, port))
}
