//! What the engine takes in: device input, in-process readings, a query for
//! a device boot's de-dup mark, the uplink's confirmations and Sync. Every
//! input goes one way; only the mark query and Sync answer.

use tokio::sync::{mpsc, oneshot};
use tributary_core::frame::Message;
use tributary_core::{Quantum, SeriesKey};

use crate::link::json::JsonMessage;

/// Fired after the input's effect is committed.
pub type Done = oneshot::Sender<()>;

/// Where a link's replies (TimeSync, Acks) go.
pub type Reply = mpsc::UnboundedSender<Message>;

/// An input to the engine.
#[derive(Debug)]
pub enum Input {
    /// Decoded frames from a device link (serial, simulated, or MQTT summaries).
    Link {
        /// A stable link name (port path, `sim:…`, `mqtt:{device}`).
        link: String,
        /// The frames with their arrival times (ms).
        frames: Vec<(Message, i64)>,
        /// Where TimeSync and Acks go (none for MQTT, which acks by PUBACK).
        reply: Option<Reply>,
        /// A device clock offset known exactly (simulated devices).
        fixed_offset: Option<i64>,
        /// Fired after the frames' effect is committed.
        done: Option<Done>,
    },
    /// JSON readings of `device` from the local broker.
    Json {
        /// Device id from the topic.
        device: String,
        /// The parsed message.
        msg: JsonMessage,
        /// Fired after commit.
        done: Option<Done>,
    },
    /// Readings of one series handed over in-process (benchmarks,
    /// embedding): the series is found or registered by its key (the global
    /// tags added) and the points folded in, in ticks of its quantum.
    Readings {
        /// The series' key as the source names it.
        key: SeriesKey,
        /// Its quantum, if the series is new.
        quantum: Quantum,
        /// (event time, ticks).
        points: Vec<(i64, i64)>,
        /// Fired after commit.
        done: Option<Done>,
    },
    /// The de-dup mark of a device boot (simulated devices resume after it).
    DeviceHwm {
        /// Device id.
        device: String,
        /// Boot.
        boot: u32,
        /// The mark.
        reply: oneshot::Sender<Option<u32>>,
    },
    /// The collector confirmed these batch sequences (from the uplink).
    Confirmed(Vec<u64>),
    /// Commit now (e.g. before shutdown) and report back.
    Sync(oneshot::Sender<()>),
}
