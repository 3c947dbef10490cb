//! The task of one `[[opcua]]` server: the `async-opcua` session, its
//! subscription and the hand-over of data changes to the engine.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use opcua::client::{
    ClientBuilder, DataChangeCallback, IdentityToken, Password, Session, SessionPollResult,
};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{
    DataChangeFilter, DataChangeTrigger, DataValue, ExtensionObject, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
    StatusCode, TimestampsToReturn, UserTokenPolicy,
};
use tokio::sync::{mpsc, watch};
use tributary_core::{Quantum, SeriesKey};
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::now_ms;

use super::config::{ItemScaling, OpcuaConfig, SecurityMode, SecurityPolicy, Trigger};
use super::value::{event_time, ticks};
use crate::engine::Input;
use crate::metrics::Metrics;
use crate::sources::backoff::{Backoff, Uptime, BACKOFF_MAX, BACKOFF_MIN};

/// A monitored item ready to hand over: its series and scaling.
struct Item {
    key: SeriesKey,
    quantum: Quantum,
    scaling: ItemScaling,
    node: NodeId,
    /// The SourceTimestamp (100 ns ticks) and value last handed over.
    last: Option<(i64, DataValue)>,
}

/// A data change as the subscription's callback saw it: client handle,
/// value, receive time (Unix ms).
type Change = (u32, DataValue, i64);

/// Changes the callback → engine queue holds per unit of the items' summed
/// queue sizes (a few publish responses' worth, each at most a full queue
/// per item).
const QUEUE_FACTOR: usize = 4;
/// The least capacity of the callback → engine queue.
const QUEUE_MIN: usize = 1024;
/// The most changes the callback → engine queue holds, whatever the items'
/// queue sizes: a stalled engine must not let memory grow with them
/// (changes past it are counted as `overflow`).
const QUEUE_MAX: usize = 65_536;

/// The capacity of the callback → engine queue for `cfg`'s items: their
/// queue sizes summed, times [`QUEUE_FACTOR`], between [`QUEUE_MIN`] and
/// [`QUEUE_MAX`].
fn queue_capacity(cfg: &OpcuaConfig) -> usize {
    cfg.items
        .iter()
        .map(|i| usize::try_from(i.queue_size).unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(QUEUE_FACTOR)
        .clamp(QUEUE_MIN, QUEUE_MAX)
}

/// Runs one server until shutdown.
pub(crate) async fn run(
    cfg: OpcuaConfig,
    data_dir: &Path,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut items = match prepare(&cfg) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(device = cfg.name, error = e, "OPC UA server not started");
            return;
        }
    };
    let pki = cfg
        .pki_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("opcua-pki"));
    let mut backoff = Backoff::new();
    let capacity = queue_capacity(&cfg);
    loop {
        let (tx, rx) = mpsc::channel(capacity);
        let started = tokio::select! {
            _ = shutdown.changed() => return,
            s = start(&cfg, &pki, &items, tx, &metrics) => s,
        };
        match started {
            Ok(Started {
                session,
                mut event_loop,
                uptime,
            }) => {
                let ends = Ends {
                    shutdown: &mut shutdown,
                    event_loop: &mut event_loop,
                };
                let gone = forward(&cfg, &mut items, rx, &engine, &metrics, ends).await;
                let _ = tokio::time::timeout(
                    Duration::from_millis(cfg.timeout_ms),
                    session.disconnect(),
                )
                .await;
                event_loop.abort();
                if gone {
                    return;
                }
                // The session ended for good (its loop gave up, or a
                // reconnection lost the subscription or some of its
                // items): start again, after a pause that keeps growing
                // while sessions do not stay connected.
                let lasted = lock(&uptime).longest(tokio::time::Instant::now());
                backoff.ended_after(lasted);
                count(&metrics, &cfg.name, "session_ended");
                tracing::warn!(device = cfg.name, "OPC UA session ended; starting again");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff.next()) => {}
                }
            }
            Err(reason) => {
                count(&metrics, &cfg.name, reason);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff.next()) => {}
                }
            }
        }
    }
}

/// The items of `cfg` with their series (the engine adds the global tags).
fn prepare(cfg: &OpcuaConfig) -> Result<Vec<Item>, String> {
    cfg.items
        .iter()
        .map(|i| {
            Ok(Item {
                key: i.key(&cfg.name)?,
                quantum: Quantum::new(i.quantum).map_err(|e| e.to_string())?,
                scaling: i.scaling()?,
                node: NodeId::from_str(&i.node_id)
                    .map_err(|_| format!("node id {:?} unreadable", i.node_id))?,
                last: None,
            })
        })
        .collect()
}

/// A session and the task that drives it.
struct Started {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<()>,
    /// The session's connected stretches, as its event loop saw them.
    uptime: Arc<Mutex<Uptime>>,
}

/// The uptime behind `m` (a panic elsewhere cannot leave it half-written:
/// each change is one assignment).
fn lock(m: &Mutex<Uptime>) -> std::sync::MutexGuard<'_, Uptime> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects, starts the session's event loop (which reconnects with
/// backoff and recreates the subscription itself, counted as it goes) and
/// subscribes; the changes go to `tx`. Returns the failure's reason label.
async fn start(
    cfg: &OpcuaConfig,
    pki: &Path,
    items: &[Item],
    tx: mpsc::Sender<Change>,
    metrics: &Arc<Metrics>,
) -> Result<Started, &'static str> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let secure = cfg.security_policy != SecurityPolicy::None;
    let builder = ClientBuilder::new()
        .application_name("tributary-agent")
        .application_uri("urn:tributary-agent")
        .product_uri("urn:tributary-agent")
        .pki_dir(pki)
        .create_sample_keypair(secure)
        .trust_server_certs(cfg.trust_server_certs)
        .session_retry_limit(-1)
        .session_retry_initial(BACKOFF_MIN)
        .session_retry_max(BACKOFF_MAX)
        .request_timeout(timeout);
    // Making the client may generate an RSA key pair (first use of a
    // secure policy): slow, so off the runtime's threads.
    let mut client = match tokio::task::spawn_blocking(move || builder.client()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(device = cfg.name, errors = ?e, "OPC UA client config refused");
            return Err("connect");
        }
        Err(e) => {
            tracing::error!(device = cfg.name, error = %e, "OPC UA client not made");
            return Err("connect");
        }
    };
    let (policy, mode) = match (cfg.security_policy, cfg.security_mode) {
        (SecurityPolicy::None, _) => (UaPolicy::None, MessageSecurityMode::None),
        (SecurityPolicy::Basic256Sha256, SecurityMode::Sign) => {
            (UaPolicy::Basic256Sha256, MessageSecurityMode::Sign)
        }
        (SecurityPolicy::Basic256Sha256, _) => (
            UaPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        ),
    };
    let identity = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => IdentityToken::UserName(u.clone(), Password::new(p.0.clone())),
        _ => IdentityToken::Anonymous,
    };
    let endpoint = (
        cfg.endpoint.as_str(),
        policy.to_uri(),
        mode,
        UserTokenPolicy::anonymous(),
    );
    let (session, event_loop) = match tokio::time::timeout(
        timeout,
        client.connect_to_matching_endpoint(endpoint, identity),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(device = cfg.name, error = %e, "cannot connect to OPC UA server");
            return Err("connect");
        }
        Err(_) => {
            tracing::warn!(device = cfg.name, "OPC UA connect timed out");
            return Err("connect");
        }
    };
    let uptime = Arc::new(Mutex::new(Uptime::default()));
    let event_loop = tokio::spawn(drive(
        event_loop.enter(),
        session.clone(),
        cfg.name.clone(),
        metrics.clone(),
        uptime.clone(),
    ));
    let connected = tokio::time::timeout(timeout, session.wait_for_connection()).await;
    let subscribed = match connected {
        Ok(true) => subscribe(cfg, &session, items, tx, metrics).await,
        _ => {
            tracing::warn!(device = cfg.name, "OPC UA session not activated");
            Err("connect")
        }
    };
    if let Err(reason) = subscribed {
        let _ = tokio::time::timeout(timeout, session.disconnect()).await;
        event_loop.abort();
        return Err(reason);
    }
    tracing::info!(
        device = cfg.name,
        items = items.len(),
        "OPC UA subscription created"
    );
    Ok(Started {
        session,
        event_loop,
        uptime,
    })
}

/// Creates the subscription and its monitored items (client handle =
/// item index + 1); items the server refuses are counted as `item`.
/// A change that finds the queue to the engine full is counted as
/// `overflow` and dropped (the library's callback must not block).
async fn subscribe(
    cfg: &OpcuaConfig,
    session: &Session,
    items: &[Item],
    tx: mpsc::Sender<Change>,
    metrics: &Metrics,
) -> Result<(), &'static str> {
    let publishing = Duration::from_millis(cfg.publishing_interval_ms);
    let mut handover = Handover::new(cfg, tx, metrics);
    // Lifetime 60 publishing intervals, keep-alive every 10: the
    // library's defaults; no limit per publish; priority 0.
    let callback = DataChangeCallback::new(move |value, item| {
        handover.push((item.client_handle(), value, now_ms()));
    });
    let id = session
        .create_subscription(publishing, 60, 10, 0, 0, true, callback)
        .await
        .map_err(|e| {
            tracing::warn!(device = cfg.name, error = %e, "OPC UA subscription refused");
            "subscribe"
        })?;
    let requests = items
        .iter()
        .zip(&cfg.items)
        .zip(1u32..)
        .map(|((item, c), handle)| {
            MonitoredItemCreateRequest::new(
                ReadValueId::from(item.node.clone()),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: handle,
                    // Milliseconds as f64: exact below 2^53.
                    #[allow(clippy::cast_precision_loss)]
                    sampling_interval: c.sampling_ms(cfg.publishing_interval_ms) as f64,
                    queue_size: c.queue_size,
                    discard_oldest: true,
                    filter: ExtensionObject::from_message(DataChangeFilter {
                        trigger: match c.trigger {
                            Trigger::Status => DataChangeTrigger::Status,
                            Trigger::StatusValue => DataChangeTrigger::StatusValue,
                            Trigger::StatusValueTimestamp => {
                                DataChangeTrigger::StatusValueTimestamp
                            }
                        },
                        deadband_type: 0,
                        deadband_value: 0.0,
                    }),
                },
            )
        })
        .collect();
    let created = session
        .create_monitored_items(id, TimestampsToReturn::Both, requests)
        .await
        .map_err(|e| {
            tracing::warn!(device = cfg.name, error = %e, "OPC UA monitored items refused");
            "subscribe"
        })?;
    // An item the server left without a result is not monitored either.
    let statuses = created
        .iter()
        .map(|r| r.result.status_code)
        .chain(std::iter::repeat(StatusCode::BadUnexpectedError));
    let refused = refused_items(cfg, statuses);
    if refused > 0 {
        metrics.opcua_error(&cfg.name, "item").inc_by(refused);
    }
    Ok(())
}

/// The subscription callback's end of the queue to the engine.
struct Handover {
    tx: mpsc::Sender<Change>,
    /// `opcua_errors{reason="overflow"}` of the server.
    overflow: Counter,
    device: String,
    /// Whether a full queue was logged yet (once per session: the counter
    /// tells how many).
    warned: bool,
}

impl Handover {
    fn new(cfg: &OpcuaConfig, tx: mpsc::Sender<Change>, metrics: &Metrics) -> Self {
        Self {
            tx,
            overflow: metrics.opcua_error(&cfg.name, "overflow"),
            device: cfg.name.clone(),
            warned: false,
        }
    }

    /// Queues `change` without waiting (the library's callback must not
    /// block); a change that finds the queue full is dropped and counted as
    /// `overflow`.
    fn push(&mut self, change: Change) {
        match self.tx.try_send(change) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.inc();
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        device = self.device,
                        "OPC UA changes arrive faster than the engine takes them; dropping them (counted as overflow)"
                    );
                }
            }
            // The receiver is gone only while the task stops.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Logs each of `cfg`'s items whose create status (in item order) is not
/// good, and returns how many there are.
fn refused_items(cfg: &OpcuaConfig, statuses: impl Iterator<Item = StatusCode>) -> u64 {
    let mut refused = 0;
    for (c, status) in cfg.items.iter().zip(statuses) {
        if !status.is_good() {
            refused += 1;
            tracing::warn!(device = cfg.name, node = c.node_id, %status, "OPC UA item refused");
        }
    }
    refused
}

/// The monitored items `session`'s subscriptions hold.
fn monitored(session: &Session) -> usize {
    let state = session.subscription_state.lock();
    state
        .subscription_ids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| state.get(id))
        .map(|s| s.monitored_items().count())
        .sum()
}

/// Drives the session's event loop until it ends, counting connection
/// losses, failed and successful reconnections, and timing its connected
/// stretches in `uptime`. It also ends it after a reconnection that left
/// the session fewer monitored items than it had when the connection
/// broke: the library recreates a subscription the server lost, but only
/// logs a refusal of its items and goes on with a subscription that
/// reports nothing — a new session subscribes them afresh.
async fn drive(
    stream: impl Stream<Item = Result<SessionPollResult, StatusCode>>,
    session: Arc<Session>,
    device: String,
    metrics: Arc<Metrics>,
    uptime: Arc<Mutex<Uptime>>,
) {
    tokio::pin!(stream);
    let mut connected_once = false;
    // The monitored items held when the connection last broke.
    let mut held = 0;
    while let Some(event) = stream.next().await {
        match event {
            Ok(SessionPollResult::ConnectionLost(status)) => {
                held = monitored(&session);
                lock(&uptime).down(tokio::time::Instant::now());
                count(&metrics, &device, "connection_lost");
                tracing::warn!(device, %status, "OPC UA connection lost");
            }
            Ok(SessionPollResult::ReconnectFailed(status)) => {
                count(&metrics, &device, "reconnect");
                tracing::warn!(device, %status, "OPC UA reconnect failed");
            }
            Ok(SessionPollResult::Reconnected(mode)) => {
                lock(&uptime).up(tokio::time::Instant::now());
                if connected_once {
                    metrics.opcua_reconnects(&device).inc();
                    tracing::info!(device, ?mode, "OPC UA session re-established");
                    let now = monitored(&session);
                    if now < held {
                        tracing::warn!(
                            device,
                            held,
                            now,
                            "OPC UA subscription recreated without all its monitored items"
                        );
                        return;
                    }
                    // async-opcua 0.19 sends no Publish for a subscription
                    // it recreated until something triggers one (its
                    // publish loop starts after the recreation's trigger).
                    session.trigger_publish_now();
                }
                connected_once = true;
            }
            Ok(_) => {}
            Err(status) => {
                tracing::info!(device, %status, "OPC UA session ended");
                return;
            }
        }
    }
}

/// What ends [`forward`]: shutdown, or the session's event loop ending
/// (the library gave up, or [`drive`] found items lost).
struct Ends<'a> {
    shutdown: &'a mut watch::Receiver<bool>,
    event_loop: &'a mut tokio::task::JoinHandle<()>,
}

/// Hands changes to the engine until shutdown or the engine is gone (true),
/// or until the session's event loop ends (false: start again).
async fn forward(
    cfg: &OpcuaConfig,
    items: &mut [Item],
    mut rx: mpsc::Receiver<Change>,
    engine: &mpsc::Sender<Input>,
    metrics: &Metrics,
    ends: Ends<'_>,
) -> bool {
    let values = metrics.opcua_values(&cfg.name);
    loop {
        let (handle, value, received) = tokio::select! {
            _ = ends.shutdown.changed() => return true,
            _ = &mut *ends.event_loop => return false,
            c = rx.recv() => match c {
                Some(c) => c,
                None => return false,
            },
        };
        let Some(item) = usize::try_from(handle)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .and_then(|i| items.get_mut(i))
        else {
            continue;
        };
        if let Some(reason) = repeat(item, &value) {
            count(metrics, &cfg.name, reason);
            continue;
        }
        let t = match ticks(&value, &item.scaling) {
            Ok(t) => t,
            Err(r) => {
                count(metrics, &cfg.name, r.label());
                tracing::debug!(device = cfg.name, metric = %item.key, refused = ?r, "OPC UA value refused");
                continue;
            }
        };
        let input = Input::Readings {
            key: item.key.clone(),
            quantum: item.quantum,
            points: vec![(event_time(&value, received), t)],
            done: None,
        };
        if engine.send(input).await.is_err() {
            return true;
        }
        values.inc();
    }
}

/// `Some("repeat")` if `value` is the one last handed over for `item` (same
/// SourceTimestamp and value: a recreated subscription's first report);
/// otherwise remembers it.
fn repeat(item: &mut Item, value: &DataValue) -> Option<&'static str> {
    let source = value.source_timestamp.as_ref()?.ticks();
    if let Some((t, v)) = &item.last {
        if *t == source && v.value == value.value && v.status == value.status {
            return Some("repeat");
        }
    }
    item.last = Some((source, value.clone()));
    None
}

fn count(metrics: &Metrics, device: &str, reason: &'static str) {
    metrics.opcua_error(device, reason).inc();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn server(queue_sizes: &[u32]) -> OpcuaConfig {
        let items: String = queue_sizes
            .iter()
            .enumerate()
            .map(|(i, q)| {
                format!("[[opcua.items]]\nnode_id = \"ns=2;i={i}\"\nmetric = \"m{i}\"\nqueue_size = {q}\n")
            })
            .collect();
        let text = format!(
            "agent_id = \"gw\"\n[[opcua]]\nname = \"press\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\n{items}"
        );
        crate::config::Config::from_toml(&text)
            .unwrap()
            .opcua
            .remove(0)
    }

    #[test]
    fn the_queue_holds_a_few_full_item_queues_and_at_least_the_minimum() {
        assert_eq!(queue_capacity(&server(&[10, 10])), QUEUE_MIN);
        assert_eq!(queue_capacity(&server(&[1000, 24])), 1024 * QUEUE_FACTOR);
        let huge = queue_capacity(&server(&[u32::MAX, u32::MAX]));
        assert!(huge <= tokio::sync::Semaphore::MAX_PERMITS);
        assert_eq!(huge, QUEUE_MAX, "bounded whatever the queue sizes");
        // A channel of that capacity can be made.
        drop(mpsc::channel::<Change>(huge));
    }

    #[test]
    fn refused_items_are_counted_missing_results_too() {
        let cfg = server(&[1, 1, 1, 1]);
        let statuses = [
            StatusCode::Good,
            StatusCode::BadNodeIdUnknown,
            StatusCode::Good,
        ];
        let statuses = statuses
            .into_iter()
            .chain(std::iter::repeat(StatusCode::BadUnexpectedError));
        assert_eq!(refused_items(&cfg, statuses), 2);
        assert_eq!(refused_items(&cfg, std::iter::repeat(StatusCode::Good)), 0);
    }

    #[test]
    fn a_full_queue_counts_each_change_it_drops_as_overflow() {
        let cfg = server(&[1]);
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(2);
        let mut handover = Handover::new(&cfg, tx, &metrics);
        for handle in 1..=5 {
            handover.push((handle, DataValue::null(), 0));
        }
        let overflow = metrics.opcua_error("press", "overflow");
        assert_eq!(overflow.get(), 3);
        assert_eq!(rx.try_recv().unwrap().0, 1);
        assert_eq!(rx.try_recv().unwrap().0, 2);
        assert!(rx.try_recv().is_err());
        // Room again: handed over, not counted.
        handover.push((6, DataValue::null(), 0));
        assert_eq!(rx.try_recv().unwrap().0, 6);
        assert_eq!(overflow.get(), 3);
        // Once the task stopped (receiver gone) nothing is an overflow.
        drop(rx);
        handover.push((7, DataValue::null(), 0));
        assert_eq!(overflow.get(), 3);
    }
}
