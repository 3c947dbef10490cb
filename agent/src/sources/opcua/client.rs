//! The task of one `[[opcua]]` server: the `async-opcua` session, its
//! subscription and the hand-over of data changes to the engine.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
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
use tributary_runtime::now_ms;

use super::config::{ItemScaling, OpcuaConfig, SecurityMode, SecurityPolicy, Trigger};
use super::value::{event_time, ticks};
use crate::engine::Input;
use crate::metrics::Metrics;
use crate::sources::backoff::{Backoff, BACKOFF_MAX, BACKOFF_MIN};

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
    loop {
        let (tx, rx) = mpsc::unbounded_channel();
        let started = tokio::select! {
            _ = shutdown.changed() => return,
            s = start(&cfg, &pki, &items, tx, &metrics) => s,
        };
        match started {
            Ok(Started {
                session,
                mut event_loop,
            }) => {
                backoff.reset();
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
}

/// Connects, starts the session's event loop (which reconnects with
/// backoff and recreates the subscription itself, counted as it goes) and
/// subscribes; the changes go to `tx`. Returns the failure's reason label.
async fn start(
    cfg: &OpcuaConfig,
    pki: &Path,
    items: &[Item],
    tx: mpsc::UnboundedSender<Change>,
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
    let event_loop = tokio::spawn(drive(
        event_loop.enter(),
        session.clone(),
        cfg.name.clone(),
        metrics.clone(),
    ));
    let connected = tokio::time::timeout(timeout, session.wait_for_connection()).await;
    let subscribed = match connected {
        Ok(true) => subscribe(cfg, &session, items, tx).await,
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
    })
}

/// Creates the subscription and its monitored items (client handle =
/// item index + 1); items the server refuses are counted as `item`.
async fn subscribe(
    cfg: &OpcuaConfig,
    session: &Session,
    items: &[Item],
    tx: mpsc::UnboundedSender<Change>,
) -> Result<(), &'static str> {
    let publishing = Duration::from_millis(cfg.publishing_interval_ms);
    // Lifetime 60 publishing intervals, keep-alive every 10: the
    // library's defaults; no limit per publish; priority 0.
    let callback = DataChangeCallback::new(move |value, item| {
        // The receiver is gone only while the task stops.
        let _ = tx.send((item.client_handle(), value, now_ms()));
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
    for (c, r) in cfg.items.iter().zip(&created) {
        let status = r.result.status_code;
        if !status.is_good() {
            tracing::warn!(device = cfg.name, node = c.node_id, %status, "OPC UA item refused");
        }
    }
    Ok(())
}

/// Drives the session's event loop until it ends, counting connection
/// losses, failed and successful reconnections.
async fn drive(
    stream: impl Stream<Item = Result<SessionPollResult, StatusCode>>,
    session: Arc<Session>,
    device: String,
    metrics: Arc<Metrics>,
) {
    tokio::pin!(stream);
    let mut connected_once = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(SessionPollResult::ConnectionLost(status)) => {
                count(&metrics, &device, "connection_lost");
                tracing::warn!(device, %status, "OPC UA connection lost");
            }
            Ok(SessionPollResult::ReconnectFailed(status)) => {
                count(&metrics, &device, "reconnect");
                tracing::warn!(device, %status, "OPC UA reconnect failed");
            }
            Ok(SessionPollResult::Reconnected(mode)) => {
                if connected_once {
                    metrics.opcua_reconnects(&device).inc();
                    tracing::info!(device, ?mode, "OPC UA session re-established");
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

/// What ends [`forward`]: shutdown, or the session's event loop giving up.
struct Ends<'a> {
    shutdown: &'a mut watch::Receiver<bool>,
    event_loop: &'a mut tokio::task::JoinHandle<()>,
}

/// Hands changes to the engine until shutdown or the engine is gone (true),
/// or until the session's event loop ends (false: start again).
async fn forward(
    cfg: &OpcuaConfig,
    items: &mut [Item],
    mut rx: mpsc::UnboundedReceiver<Change>,
    engine: &mpsc::Sender<Input>,
    metrics: &Metrics,
    ends: Ends<'_>,
) -> bool {
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
        metrics.opcua_values(&cfg.name).inc();
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
