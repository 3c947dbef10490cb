//! Modbus devices (`[[modbus]]`): TCP and RTU, polled by a task per device.
//!
//! # Design
//! Each device's task owns its connection (a [`tokio_modbus`] client over
//! TCP or over the [`rtu`] port) and polls every `interval_ms` (missed ticks
//! are skipped, never bunched): the [`plan`]'s read requests in turn, each
//! bounded by `timeout_ms`. The poll's event time is the agent's wall clock
//! ([`tributary_runtime::now_ms`], `CLOCK_REALTIME`) taken just before the
//! poll's first request, for every value the poll reads. Values are
//! [`decode`]d into ticks of their series' quantum (exact for integer
//! registers) and handed to the engine as [`Input::Readings`] of the series
//! `{metric}` of device `{name}`.
//!
//! Failures are counted per device and reason in
//! `tributary_agent_modbus_errors_total{device,reason}` and logged with the
//! device's name: `connect` (cannot connect or open the port), `timeout`
//! (no response in `timeout_ms`), `crc` (RTU: bytes came but no frame
//! checked), `io` (the connection broke), `protocol` (a response that does
//! not match the request), `exception` (the device answered with an
//! exception code; the connection is kept and the poll goes on), `value` (a
//! value that cannot be scaled into ticks). After any but `exception` and
//! `value` the connection is dropped and reopened after a backoff that
//! starts at 100 ms and doubles to 30 s (reset by a good poll). A device
//! only ever waits on itself: its failures never stall another device or
//! the engine.

pub mod config;
pub mod decode;
pub mod plan;
mod rtu;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_modbus::client::{Client as _, Context as Client, Reader};
use tokio_modbus::Slave;
use tributary_core::{Quantum, SeriesKey};
use tributary_runtime::now_ms;

use crate::engine::Input;
use crate::metrics::Metrics;
use crate::sources::backoff::Backoff;
use crate::sources::scaling::Scaling;
pub use config::{DataType, ModbusConfig, Order, Parity, RegisterConfig, Table};
use decode::{raw, ticks, Raw};
use plan::{plan, Request};

/// A register ready to poll: its series and scaling.
struct Series {
    key: SeriesKey,
    quantum: Quantum,
    scaling: Scaling,
}

/// Why one request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Timeout,
    Crc,
    Io,
    Protocol,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Crc => "crc",
            Failure::Io => "io",
            Failure::Protocol => "protocol",
        }
    }
}

/// An open connection and, for RTU, the port's received-bytes count.
struct Conn {
    client: Client,
    received: Option<Arc<AtomicUsize>>,
}

/// Runs one device until shutdown.
pub(crate) async fn run(
    cfg: ModbusConfig,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let series = match prepare(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(device = cfg.name, error = e, "Modbus device not started");
            return;
        }
    };
    let requests = plan(&cfg.registers, cfg.max_batch);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    let mut readings: Vec<(usize, i64)> = Vec::with_capacity(series.len());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if Instant::now() < retry_at {
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, connect(&cfg)).await {
                Ok(Ok(c)) => {
                    tracing::info!(device = cfg.name, "Modbus device connected");
                    conn.insert(c)
                }
                Ok(Err(e)) => {
                    count(&metrics, &cfg.name, "connect");
                    tracing::warn!(device = cfg.name, error = %e, "cannot connect to Modbus device");
                    retry_at = Instant::now() + backoff.next();
                    continue;
                }
                Err(_) => {
                    count(&metrics, &cfg.name, "connect");
                    tracing::warn!(device = cfg.name, "Modbus connect timed out");
                    retry_at = Instant::now() + backoff.next();
                    continue;
                }
            },
        };
        let at = now_ms();
        readings.clear();
        let failed = poll(
            c,
            &cfg,
            &requests,
            &series,
            timeout,
            &metrics,
            &mut readings,
        )
        .await;
        metrics.modbus_polls(&cfg.name).inc();
        if !send(&engine, &series, at, &readings).await {
            return;
        }
        match failed {
            None => backoff.reset(),
            Some(f) => {
                count(&metrics, &cfg.name, f.label());
                tracing::warn!(
                    device = cfg.name,
                    reason = f.label(),
                    "Modbus poll failed; reconnecting"
                );
                if let Some(mut c) = conn.take() {
                    let _ = tokio::time::timeout(timeout, c.client.disconnect()).await;
                }
                retry_at = Instant::now() + backoff.next();
            }
        }
    }
}

/// The series of `cfg`'s registers (the engine adds the global tags) and
/// their scaling.
fn prepare(cfg: &ModbusConfig) -> Result<Vec<Series>, String> {
    cfg.registers
        .iter()
        .map(|r| {
            let key = SeriesKey::new(r.metric.as_str(), cfg.name.as_str(), Default::default())
                .map_err(|e| e.to_string())?;
            Ok(Series {
                key,
                quantum: Quantum::new(r.quantum).map_err(|e| e.to_string())?,
                scaling: r.scaling()?,
            })
        })
        .collect()
}

async fn connect(cfg: &ModbusConfig) -> std::io::Result<Conn> {
    let slave = Slave(cfg.unit);
    if let Some(addr) = &cfg.tcp {
        let addr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let client = tokio_modbus::client::tcp::connect_slave(addr, slave).await?;
        return Ok(Conn {
            client,
            received: None,
        });
    }
    let port = rtu::Port::open(cfg)?;
    let received = Some(port.received());
    Ok(Conn {
        client: tokio_modbus::client::rtu::attach_slave(port, slave),
        received,
    })
}

/// One poll: every request in turn; the values read go to `out` as
/// (series index, ticks). Stops at the first failure of the connection.
async fn poll(
    c: &mut Conn,
    cfg: &ModbusConfig,
    requests: &[Request],
    series: &[Series],
    timeout: Duration,
    metrics: &Metrics,
    out: &mut Vec<(usize, i64)>,
) -> Option<Failure> {
    for req in requests {
        let read = tokio::time::timeout(timeout, read(&mut c.client, req)).await;
        let words = match read {
            Ok(Ok(Ok(words))) => words,
            Ok(Ok(Err(code))) => {
                count(metrics, &cfg.name, "exception");
                tracing::warn!(device = cfg.name, table = ?req.table, start = req.start,
                    count = req.count, ?code, "Modbus exception response");
                continue;
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                tracing::warn!(device = cfg.name, error = %e, "Modbus connection failed");
                return Some(Failure::Io);
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                tracing::warn!(device = cfg.name, error = %e, "Modbus protocol error");
                return Some(Failure::Protocol);
            }
            Err(_) => {
                let garbled = c
                    .received
                    .as_ref()
                    .is_some_and(|r| r.load(Ordering::Relaxed) > 0);
                return Some(if garbled {
                    Failure::Crc
                } else {
                    Failure::Timeout
                });
            }
        };
        for &i in &req.members {
            let r = &cfg.registers[i];
            let value = match &words {
                Words::Bits(b) => req
                    .slice(r, b)
                    .and_then(|b| b.first())
                    .map(|&b| Raw::Int(i128::from(b))),
                Words::Regs(w) => req
                    .slice(r, w)
                    .and_then(|w| raw(w, r.data_type, r.byte_order, r.word_order)),
            };
            match value.map(|v| ticks(v, &series[i].scaling)) {
                Some(Ok(t)) => out.push((i, t)),
                Some(Err(e)) => {
                    count(metrics, &cfg.name, "value");
                    tracing::warn!(device = cfg.name, metric = r.metric, error = %e, "Modbus value refused");
                }
                None => {
                    count(metrics, &cfg.name, "protocol");
                    tracing::warn!(
                        device = cfg.name,
                        metric = r.metric,
                        "Modbus response too short"
                    );
                }
            }
        }
    }
    None
}

/// A response's values.
enum Words {
    Bits(Vec<bool>),
    Regs(Vec<u16>),
}

async fn read(client: &mut Client, req: &Request) -> tokio_modbus::Result<Words> {
    let (s, n) = (req.start, req.count);
    Ok(match req.table {
        Table::Holding => client.read_holding_registers(s, n).await?.map(Words::Regs),
        Table::Input => client.read_input_registers(s, n).await?.map(Words::Regs),
        Table::Coil => client.read_coils(s, n).await?.map(Words::Bits),
        Table::Discrete => client.read_discrete_inputs(s, n).await?.map(Words::Bits),
    })
}

/// Hands the poll's values to the engine; false if it is gone.
async fn send(
    engine: &mpsc::Sender<Input>,
    series: &[Series],
    at: i64,
    readings: &[(usize, i64)],
) -> bool {
    for &(i, t) in readings {
        let s = &series[i];
        let input = Input::Readings {
            key: s.key.clone(),
            quantum: s.quantum,
            points: vec![(at, t)],
            done: None,
        };
        if engine.send(input).await.is_err() {
            return false;
        }
    }
    true
}

fn count(metrics: &Metrics, device: &str, reason: &'static str) {
    metrics.modbus_error(device, reason).inc();
}
