//! The reliable device → gateway link: frames are written to a byte sink,
//! kept in a fixed resend ring until the gateway acks them, and coarsened
//! (adjacent windows of one channel merged) before anything is dropped when
//! the ring is full. Incoming bytes are decoded incrementally.

use heapless::Vec;
use tributary_core::frame::{
    encode, DeviceStats, FrameDecoder, Message, ReadingFrame, SummaryFrame, MAX_FRAME,
};

/// Where encoded frame bytes go (a UART, a radio, a test buffer).
pub trait ByteSink {
    /// Writes the bytes of one whole frame.
    fn write_frame(&mut self, bytes: &[u8]);
}

impl<F: FnMut(&[u8])> ByteSink for F {
    fn write_frame(&mut self, bytes: &[u8]) {
        self(bytes)
    }
}

/// A frame awaiting its ack: only the two reliable kinds, so a slot is not
/// as large as a Hello.
// Slots hold frames inline: no allocator to box them on the device.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Pending {
    Summary(SummaryFrame),
    Reading(ReadingFrame),
}

impl Pending {
    fn to_message(&self) -> Message {
        match self {
            Pending::Summary(f) => Message::Summary(f.clone()),
            Pending::Reading(r) => Message::Reading(*r),
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    msg: Pending,
    sent_at: Option<u64>,
}

/// The link's counters (a subset of [`DeviceStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Readings lost because the ring was full even after coarsening.
    pub dropped_readings: u32,
    /// Frames merged into a neighbour to make room.
    pub coarsened: u32,
    /// Frames sent again after an ack timeout.
    pub resent: u32,
    /// Corrupt frames received.
    pub corrupt_frames: u32,
    /// Frames that could not be encoded (too large; never expected).
    pub encode_errors: u32,
}

/// A resend ring of `R` frames and a receive buffer of `RX` bytes.
#[derive(Debug)]
pub struct Link<const R: usize, const RX: usize> {
    ring: Vec<Slot, R>,
    timeout_ms: u64,
    decoder: FrameDecoder<RX>,
    stats: LinkStats,
}

fn readings(msg: &Pending) -> u32 {
    match msg {
        Pending::Summary(f) => f.summary.count(),
        Pending::Reading(_) => 1,
    }
}

fn id(msg: &Pending) -> (u32, u32) {
    match msg {
        Pending::Summary(f) => (f.boot, f.seq),
        Pending::Reading(r) => (r.boot, r.seq),
    }
}

impl<const R: usize, const RX: usize> Link<R, RX> {
    /// A link that resends unacked frames every `timeout_ms`.
    pub fn new(timeout_ms: u64) -> Self {
        Link {
            ring: Vec::new(),
            timeout_ms,
            decoder: FrameDecoder::new(),
            stats: LinkStats::default(),
        }
    }

    /// Counters since boot.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Adds the link's counters to `stats` for a Hello frame.
    pub fn fill_stats(&self, stats: &mut DeviceStats) {
        stats.dropped_readings = stats
            .dropped_readings
            .saturating_add(self.stats.dropped_readings);
        stats.coarsened = stats.coarsened.saturating_add(self.stats.coarsened);
        stats.resent = stats.resent.saturating_add(self.stats.resent);
        stats.corrupt_frames = stats
            .corrupt_frames
            .saturating_add(self.stats.corrupt_frames);
    }

    /// Frames waiting for an ack.
    pub fn pending(&self) -> usize {
        self.ring.len()
    }

    /// Queues a Summary or Reading frame for reliable delivery. When the ring
    /// is full, the oldest unsent adjacent summaries of one channel are merged;
    /// only if none can be merged is the oldest frame dropped (and its
    /// readings counted). Other message kinds are ignored (send them with
    /// [`Link::send_now`]).
    pub fn enqueue(&mut self, msg: Message) {
        let msg = match msg {
            Message::Summary(f) => Pending::Summary(f),
            Message::Reading(r) => Pending::Reading(r),
            _ => return,
        };
        if self.ring.is_full() && !self.coarsen() && !self.ring.is_empty() {
            let old = self.ring.remove(0);
            self.stats.dropped_readings = self
                .stats
                .dropped_readings
                .saturating_add(readings(&old.msg));
        }
        if let Err(slot) = self.ring.push(Slot { msg, sent_at: None }) {
            // Only reachable with R == 0.
            self.stats.dropped_readings = self
                .stats
                .dropped_readings
                .saturating_add(readings(&slot.msg));
        }
    }

    /// Merges the oldest unsent pair of summaries of one channel whose
    /// windows touch (or coincide). Returns whether a slot was freed.
    fn coarsen(&mut self) -> bool {
        for i in 0..self.ring.len() {
            for j in i + 1..self.ring.len() {
                if self.try_merge(i, j) {
                    self.ring.remove(j);
                    self.stats.coarsened = self.stats.coarsened.saturating_add(1);
                    return true;
                }
            }
        }
        false
    }

    fn try_merge(&mut self, i: usize, j: usize) -> bool {
        let (head, tail) = self.ring.split_at_mut(j);
        let (Some(a), Some(b)) = (head.get_mut(i), tail.first()) else {
            return false;
        };
        if a.sent_at.is_some() || b.sent_at.is_some() {
            return false;
        }
        let (Pending::Summary(a), Pending::Summary(b)) = (&mut a.msg, &b.msg) else {
            return false;
        };
        if a.boot != b.boot || a.channel != b.channel {
            return false;
        }
        let a_end = a.start_tick + u64::from(a.width_ms);
        let (delta, width) = if b.start_tick == a_end {
            match a.width_ms.checked_add(b.width_ms) {
                Some(w) => (a.width_ms, w),
                None => return false,
            }
        } else if b.start_tick == a.start_tick && b.width_ms == a.width_ms {
            (0, a.width_ms)
        } else {
            return false;
        };
        let mut later = b.summary.clone();
        if later.delay_times(delta).is_err() {
            return false;
        }
        let mut merged = a.summary.clone();
        if merged.merge(&later).is_err() {
            return false;
        }
        a.summary = merged;
        a.width_ms = width;
        true
    }

    /// Encodes and writes `msg` once, outside the resend ring (Hello).
    pub fn send_now(&mut self, msg: &Message, sink: &mut impl ByteSink) {
        let mut buf = [0u8; MAX_FRAME];
        match encode(msg, &mut buf) {
            Ok(n) => sink.write_frame(buf.get(..n).unwrap_or(&[])),
            Err(_) => self.stats.encode_errors = self.stats.encode_errors.saturating_add(1),
        }
    }

    /// Sends every frame never sent or unacked for the timeout.
    pub fn poll(&mut self, now: u64, sink: &mut impl ByteSink) {
        let mut buf = [0u8; MAX_FRAME];
        for slot in self.ring.iter_mut() {
            let due = match slot.sent_at {
                None => true,
                Some(t) => now.saturating_sub(t) >= self.timeout_ms,
            };
            if !due {
                continue;
            }
            match encode(&slot.msg.to_message(), &mut buf) {
                Ok(n) => sink.write_frame(buf.get(..n).unwrap_or(&[])),
                Err(_) => {
                    self.stats.encode_errors = self.stats.encode_errors.saturating_add(1);
                    continue;
                }
            }
            if slot.sent_at.is_some() {
                self.stats.resent = self.stats.resent.saturating_add(1);
            }
            slot.sent_at = Some(now);
        }
    }

    /// Feeds received bytes: Acks release their frame; every other valid
    /// message (TimeSync, ...) is passed to `on_message`; corrupt frames are
    /// counted and skipped.
    pub fn receive(&mut self, bytes: &[u8], mut on_message: impl FnMut(Message)) {
        for &b in bytes {
            match self.decoder.push(b) {
                None => {}
                Some(Ok(Message::Ack(ack))) => {
                    self.ring.retain(|s| id(&s.msg) != (ack.boot, ack.seq));
                }
                Some(Ok(m)) => on_message(m),
                Some(Err(_)) => {
                    self.stats.corrupt_frames = self.stats.corrupt_frames.saturating_add(1)
                }
            }
        }
    }
}
