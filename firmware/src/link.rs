//! The reliable device → gateway link: frames are written to a byte sink,
//! kept in a fixed resend ring until the gateway acks them, and coarsened
//! (adjacent windows of one channel merged) before anything is dropped when
//! the ring is full. Incoming bytes are decoded incrementally.
//!
//! # Memory
//! The ring keeps frames *encoded*, exactly the bytes written to the sink
//! (COBS, delimiter included), packed oldest first in one byte pool of `P`
//! bytes, plus a small record per frame (ids, window, length, send time).
//! A decoded [`SummaryFrame`] takes ~360 bytes whatever it holds; encoded, a
//! typical summary is 40–110 bytes (the simulated devices' frames: median
//! 50, largest seen 110) and the largest possible one fits [`MAX_FRAME`].
//! The default pool, [`DEFAULT_POOL`] = 4096 bytes, is 16 frames of 256
//! bytes: 2–5 times a typical frame, and still 6 worst-case frames. The ring
//! is full when it holds `R` frames *or* the next frame does not fit the
//! pool; either way it coarsens first and drops only when nothing can merge.
//! `Link<16, 128>` takes 4,936 bytes; with `Aggregator<8>` 7,752 (figures
//! example).
//!
//! Resending writes the stored bytes as they are; only coarsening decodes
//! (two frames), merges and re-encodes, on the stack.

use core::fmt;

use heapless::Vec;
use tributary_core::frame::{
    payload_in_place, DeviceStats, FrameDecoder, FrameError, Message, SummaryFrame, MAX_FRAME,
};

use crate::wire;

/// The default byte pool of a [`Link`]: 16 frames of 256 bytes (see the
/// module documentation for the sizing).
pub const DEFAULT_POOL: usize = 4096;

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

/// `sent_at` of a frame never written.
const NEVER: u64 = u64::MAX;

/// What the ring knows about a stored frame without decoding it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the frame was last written, or [`NEVER`].
    sent_at: u64,
    /// Window start (Summary) or reading tick (Reading).
    start_tick: u64,
    boot: u32,
    seq: u32,
    /// Window width (0 for a Reading).
    width_ms: u32,
    /// Readings the frame carries (counted if it is dropped).
    readings: u32,
    /// Encoded length in the pool.
    len: u16,
    channel: u8,
    summary: bool,
}

impl Slot {
    fn unsent(&self) -> bool {
        self.sent_at == NEVER
    }

    /// Whether `later` is an unsent summary of the same boot and channel
    /// whose window follows or coincides with this unsent summary's.
    fn can_absorb(&self, later: &Slot) -> bool {
        self.summary
            && later.summary
            && self.unsent()
            && later.unsent()
            && self.boot == later.boot
            && self.channel == later.channel
            && (Some(later.start_tick) == self.start_tick.checked_add(u64::from(self.width_ms))
                || (later.start_tick == self.start_tick && later.width_ms == self.width_ms))
    }
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

/// A resend ring of at most `R` frames in a pool of `P` bytes, and a receive
/// buffer of `RX` bytes.
pub struct Link<const R: usize, const RX: usize, const P: usize = DEFAULT_POOL> {
    slots: Vec<Slot, R>,
    /// The frames of `slots`, in order, packed from the start.
    pool: [u8; P],
    used: usize,
    timeout_ms: u64,
    /// The most frames sent and not yet acked at once.
    window: usize,
    decoder: FrameDecoder<RX>,
    stats: LinkStats,
}

impl<const R: usize, const RX: usize, const P: usize> fmt::Debug for Link<R, RX, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("pending", &self.slots.len())
            .field("pool_used", &self.used)
            .field("pool", &P)
            .field("timeout_ms", &self.timeout_ms)
            .field("window", &self.window)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Decodes the stored Summary frame `bytes` (delimiter included) in `scratch`.
fn decode_stored(bytes: &[u8], scratch: &mut [u8; MAX_FRAME]) -> Option<SummaryFrame> {
    let body = bytes.strip_suffix(&[0])?;
    let buf = scratch.get_mut(..body.len())?;
    buf.copy_from_slice(body);
    wire::stored_summary(payload_in_place(buf).ok()?)
}

/// `b`'s summary merged into `a`'s (the window following or coinciding
/// with `a`'s), or `None` if the times or the summaries cannot merge.
// Not inlined, nor is `try_merge`: inlined, the merge and its moves of whole
// frames took ~650 bytes more code (freestanding image).
#[inline(never)]
fn merged(mut a: SummaryFrame, b: &SummaryFrame) -> Option<SummaryFrame> {
    let a_end = a.start_tick.checked_add(u64::from(a.width_ms))?;
    let (delta, width) = if b.start_tick == a_end {
        (a.width_ms, a.width_ms.checked_add(b.width_ms)?)
    } else if b.start_tick == a.start_tick && b.width_ms == a.width_ms {
        (0, a.width_ms)
    } else {
        return None;
    };
    let mut later = b.summary.clone();
    later.delay_times(delta).ok()?;
    a.summary.merge(&later).ok()?;
    a.width_ms = width;
    Some(a)
}

impl<const R: usize, const RX: usize, const P: usize> Link<R, RX, P> {
    /// A link that resends unacked frames every `timeout_ms`.
    pub fn new(timeout_ms: u64) -> Self {
        Link {
            slots: Vec::new(),
            pool: [0; P],
            used: 0,
            timeout_ms,
            window: R,
            decoder: FrameDecoder::new(),
            stats: LinkStats::default(),
        }
    }

    /// Limits the frames in flight (sent, not yet acked) to `frames` (at
    /// least 1); the default is `R`, so every frame is sent as soon as it is
    /// polled. With a window, frames beyond it wait unsent while the gateway
    /// does not ack — during an outage, say — and so can still be coarsened
    /// when the ring fills, instead of the oldest being dropped. A window
    /// should cover the frames one window close emits (one per channel).
    pub fn with_window(mut self, frames: usize) -> Self {
        self.window = frames.max(1);
        self
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
        self.slots.len()
    }

    /// Where this boot's unacknowledged frames begin, for a Hello's
    /// `first_unacked`: the sequence of the oldest frame waiting for an ack
    /// (sent or not), or `next` — the sequence the next frame will get
    /// ([`crate::Aggregator::next_seq`]) — when none waits. Every frame
    /// below it was acked, dropped from the full ring or merged into an
    /// older one, and is never sent again. (The ring holds frames in the
    /// order they were queued, which is their sequence order; a merge keeps
    /// the older frame's sequence.)
    pub fn first_unacked(&self, next: u32) -> u32 {
        self.slots.first().map_or(next, |s| s.seq)
    }

    /// Bytes of the pool the waiting frames take.
    pub fn pool_used(&self) -> usize {
        self.used
    }

    fn count_dropped(&mut self, readings: u32) {
        self.stats.dropped_readings = self.stats.dropped_readings.saturating_add(readings);
    }

    /// Queues a Summary or Reading frame for reliable delivery. When the ring
    /// is full (`R` frames, or the frame does not fit the pool), the oldest
    /// unsent adjacent summaries of one channel are merged; only if none can
    /// be merged is the oldest frame dropped (and its readings counted).
    /// Other message kinds are ignored (send them with [`Link::send_now`]).
    pub fn enqueue(&mut self, msg: Message) {
        let mut buf = [0u8; MAX_FRAME];
        let (slot, encoded) = match &msg {
            Message::Summary(f) => (
                Slot {
                    sent_at: NEVER,
                    start_tick: f.start_tick,
                    boot: f.boot,
                    seq: f.seq,
                    width_ms: f.width_ms,
                    readings: f.summary.count(),
                    len: 0,
                    channel: f.channel,
                    summary: true,
                },
                wire::encode_summary(f, &mut buf),
            ),
            Message::Reading(r) => (
                Slot {
                    sent_at: NEVER,
                    start_tick: r.tick,
                    boot: r.boot,
                    seq: r.seq,
                    width_ms: 0,
                    readings: 1,
                    len: 0,
                    channel: r.channel,
                    summary: false,
                },
                wire::encode_reading(r, &mut buf),
            ),
            _ => return,
        };
        let Ok(n) = encoded else {
            self.stats.encode_errors = self.stats.encode_errors.saturating_add(1);
            self.count_dropped(slot.readings);
            return;
        };
        drop(msg);
        let (Some(bytes), Ok(len)) = (buf.get(..n), u16::try_from(n)) else {
            self.count_dropped(slot.readings);
            return;
        };
        // Make room: every round frees a slot (by a merge or a drop) or stops.
        while self.slots.is_full() || P.saturating_sub(self.used) < n {
            if !self.coarsen() && !self.drop_oldest() {
                break;
            }
        }
        if self.slots.is_full() || P.saturating_sub(self.used) < n {
            // Only when the frame exceeds the whole pool, or R == 0.
            self.count_dropped(slot.readings);
            return;
        }
        let Some(dest) = self.pool.get_mut(self.used..self.used + n) else {
            self.count_dropped(slot.readings);
            return;
        };
        dest.copy_from_slice(bytes);
        self.used += n;
        // Cannot fail: checked not full above.
        let _ = self.slots.push(Slot { len, ..slot });
    }

    /// Drops the oldest frame, counting its readings. Returns whether one
    /// was there.
    fn drop_oldest(&mut self) -> bool {
        let Some(readings) = self.slots.first().map(|s| s.readings) else {
            return false;
        };
        self.count_dropped(readings);
        self.remove(0);
        true
    }

    /// Where slot `k`'s bytes start in the pool.
    fn offset(&self, k: usize) -> usize {
        self.slots.iter().take(k).map(|s| usize::from(s.len)).sum()
    }

    /// The stored bytes of slot `k`.
    fn bytes(&self, k: usize) -> &[u8] {
        let Some(slot) = self.slots.get(k) else {
            return &[];
        };
        let off = self.offset(k);
        self.pool
            .get(off..off + usize::from(slot.len))
            .unwrap_or(&[])
    }

    /// Removes slot `k` and closes the gap in the pool.
    fn remove(&mut self, k: usize) {
        let Some(len) = self.slots.get(k).map(|s| usize::from(s.len)) else {
            return;
        };
        let off = self.offset(k);
        if off + len <= self.used && self.used <= P {
            self.pool.copy_within(off + len..self.used, off);
        }
        self.used = self.used.saturating_sub(len);
        self.slots.remove(k);
    }

    /// Replaces slot `k`'s bytes with `new` (the caller checked it fits).
    fn replace(&mut self, k: usize, new: &[u8]) -> bool {
        let Some(old) = self.slots.get(k).map(|s| usize::from(s.len)) else {
            return false;
        };
        let Ok(new_len) = u16::try_from(new.len()) else {
            return false;
        };
        let off = self.offset(k);
        if off + old > self.used {
            return false;
        }
        let end = self.used - old + new.len();
        if end > P {
            return false;
        }
        self.pool.copy_within(off + old..self.used, off + new.len());
        if let Some(dest) = self.pool.get_mut(off..off + new.len()) {
            dest.copy_from_slice(new);
        }
        self.used = end;
        if let Some(s) = self.slots.get_mut(k) {
            s.len = new_len;
        }
        true
    }

    /// Merges the oldest unsent pair of summaries of one channel whose
    /// windows touch (or coincide). Returns whether a slot was freed.
    fn coarsen(&mut self) -> bool {
        for i in 0..self.slots.len() {
            for j in i + 1..self.slots.len() {
                let (Some(a), Some(b)) = (self.slots.get(i), self.slots.get(j)) else {
                    continue;
                };
                if a.can_absorb(b) && self.try_merge(i, j) {
                    self.stats.coarsened = self.stats.coarsened.saturating_add(1);
                    return true;
                }
            }
        }
        false
    }

    /// Decodes slots `i` < `j`, merges `j` into `i`, re-encodes `i` and
    /// removes `j`. Nothing changes unless all of it succeeds.
    #[inline(never)]
    fn try_merge(&mut self, i: usize, j: usize) -> bool {
        let mut scratch = [0u8; MAX_FRAME];
        let Some(a) = decode_stored(self.bytes(i), &mut scratch) else {
            return false;
        };
        let Some(b) = decode_stored(self.bytes(j), &mut scratch) else {
            return false;
        };
        let Some(m) = merged(a, &b) else {
            return false;
        };
        let (width_ms, readings) = (m.width_ms, m.summary.count());
        let Ok(n) = wire::encode_summary(&m, &mut scratch) else {
            return false;
        };
        let (old_i, old_j) = match (self.slots.get(i), self.slots.get(j)) {
            (Some(a), Some(b)) => (usize::from(a.len), usize::from(b.len)),
            _ => return false,
        };
        if self.used.saturating_sub(old_i + old_j) + n > P {
            return false;
        }
        let Some(new) = scratch.get(..n) else {
            return false;
        };
        self.remove(j);
        if !self.replace(i, new) {
            return false; // unreachable: the size was checked above
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.width_ms = width_ms;
            s.readings = readings;
        }
        true
    }

    /// Encodes and writes `msg` once, outside the resend ring (a Hello).
    /// A device sends only Hello, Summary and Reading frames: an Ack or a
    /// TimeSync is not written and counts as an encode error.
    pub fn send_now(&mut self, msg: &Message, sink: &mut impl ByteSink) {
        let mut buf = [0u8; MAX_FRAME];
        let encoded = match msg {
            Message::Hello(h) => wire::encode_hello(h, &mut buf),
            Message::Summary(f) => wire::encode_summary(f, &mut buf),
            Message::Reading(r) => wire::encode_reading(r, &mut buf),
            Message::Ack(_) | Message::TimeSync(_) => Err(FrameError::Oversized),
        };
        match encoded {
            Ok(n) => sink.write_frame(buf.get(..n).unwrap_or(&[])),
            Err(_) => self.stats.encode_errors = self.stats.encode_errors.saturating_add(1),
        }
    }

    /// Resends every frame unacked for the timeout, and sends never-sent
    /// frames, oldest first, while fewer than the window are in flight.
    pub fn poll(&mut self, now: u64, sink: &mut impl ByteSink) {
        let mut in_flight = self.slots.iter().filter(|s| !s.unsent()).count();
        let mut off = 0;
        for slot in self.slots.iter_mut() {
            let len = usize::from(slot.len);
            let bytes = self.pool.get(off..off + len).unwrap_or(&[]);
            off += len;
            let due = if slot.unsent() {
                in_flight < self.window
            } else {
                now.saturating_sub(slot.sent_at) >= self.timeout_ms
            };
            if !due {
                continue;
            }
            if slot.unsent() {
                in_flight += 1;
            }
            sink.write_frame(bytes);
            if !slot.unsent() {
                self.stats.resent = self.stats.resent.saturating_add(1);
            }
            // `now` = u64::MAX (half a billion years of ms) would read as unsent.
            slot.sent_at = now.min(NEVER - 1);
        }
    }

    /// Feeds received bytes: Acks release their frame; a TimeSync is passed
    /// to `on_message`; corrupt frames, and valid frames of a kind a device
    /// does not accept (Hello, Summary, Reading), are counted in
    /// `corrupt_frames` and skipped.
    pub fn receive(&mut self, bytes: &[u8], mut on_message: impl FnMut(Message)) {
        for &b in bytes {
            let msg = match self.decoder.push_payload(b) {
                None => continue,
                Some(Ok(payload)) => wire::downlink(payload),
                Some(Err(_)) => None,
            };
            match msg {
                Some(Message::Ack(ack)) => {
                    while let Some(k) = self
                        .slots
                        .iter()
                        .position(|s| (s.boot, s.seq) == (ack.boot, ack.seq))
                    {
                        self.remove(k);
                    }
                }
                Some(m) => on_message(m),
                None => self.stats.corrupt_frames = self.stats.corrupt_frames.saturating_add(1),
            }
        }
    }
}
