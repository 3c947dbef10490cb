//! Device ↔ agent link frames: postcard + CRC-32 + COBS, no allocation.
//!
//! # Format (version 3)
//! ```text
//! COBS( version:u8 | postcard(Message) | crc32(version ‖ payload):u32 LE ) 0x00
//! ```
//! The CRC is CRC-32/ISO-HDLC over the version byte and the postcard bytes.
//! COBS removes every zero byte from the frame, so `0x00` delimits frames and
//! a receiver resynchronises at the next delimiter after any corruption.
//!
//! Version 2 (issue #13): a Summary frame's sketch indexes the real reading
//! v·q, in 304 `u8` buckets shared by both signs; version 1 indexed the tick
//! count in 64 `u16` buckets per sign. A version-1 frame is refused
//! ([`FrameError::UnknownVersion`]) — its sketch cannot be converted exactly —
//! and a device keeps resending it until it is updated. Version 2 also has
//! the Hello's `first_unacked` (issue #12; version 2 had not shipped without
//! it).
//!
//! Version 3 (issue #15): a TimeSync names the device tick of the Hello it
//! answers (`hello_tick`), so the device measures the round trip and takes
//! the midpoint — a TimeSync held up on the way (an unread port, a buffer, a
//! slow link) shows as a long round trip instead of shifting every window.
//! A version-2 frame is refused like a version-1 frame.
//!
//! Encoding writes into a caller-provided buffer; [`FrameDecoder`] accumulates
//! bytes into a fixed buffer and yields one result per delimiter, so a
//! truncated, corrupt or oversized frame costs exactly that frame. Decoding
//! never panics; every failure is a [`FrameError`].

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::fixed::FixedSummary;
use crate::quantum::Quantum;

/// The frame format version this crate speaks (see the module documentation).
pub const FRAME_VERSION: u8 = 3;
/// The largest decoded frame: version + payload + CRC.
pub const MAX_PAYLOAD: usize = 600;
/// The largest encoded frame including the delimiter.
pub const MAX_FRAME: usize = MAX_PAYLOAD + MAX_PAYLOAD / 254 + 2;
/// The most channels a device announces.
pub const MAX_CHANNELS: usize = 8;

/// The frame CRC: a 1 KiB lookup table by default; with the `small-crc`
/// feature (for devices short of flash) bit by bit, without a table. Both
/// compute the same CRC-32/ISO-HDLC.
#[cfg(not(feature = "small-crc"))]
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
#[cfg(feature = "small-crc")]
const CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);

/// A device id on the link (a valid series device id of at most 32 chars).
pub type DeviceName = heapless::String<32>;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a version byte and a CRC.
    Truncated,
    /// The COBS encoding is invalid.
    Cobs,
    /// The CRC does not match the contents.
    Crc {
        /// The CRC computed over the received bytes.
        computed: u32,
        /// The CRC the frame carried.
        received: u32,
    },
    /// A frame version this build does not know.
    UnknownVersion(u8),
    /// The bytes are not a valid message of this version.
    Malformed,
    /// The frame exceeds the receive buffer or [`MAX_PAYLOAD`].
    Oversized,
    /// The output buffer is too small for the encoded frame.
    BufferTooSmall,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => {
                f.write_str("frame truncated: shorter than version byte and CRC")
            }
            FrameError::Cobs => f.write_str("frame has invalid COBS encoding"),
            FrameError::Crc { computed, received } => {
                write!(
                    f,
                    "frame CRC mismatch: computed {computed:#010x}, frame carries {received:#010x}"
                )
            }
            FrameError::UnknownVersion(v) => write!(
                f,
                "unknown frame version {v} (this build speaks {FRAME_VERSION})"
            ),
            FrameError::Malformed => f.write_str("frame payload is not a valid message"),
            FrameError::Oversized => write!(f, "frame longer than {MAX_PAYLOAD} bytes"),
            FrameError::BufferTooSmall => f.write_str("output buffer too small for the frame"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Counters a device reports in its Hello/status frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceStats {
    /// Readings dropped because the resend ring was full even after coarsening.
    pub dropped_readings: u32,
    /// Summary frames merged into neighbours to make room.
    pub coarsened: u32,
    /// Sensor reads that failed (bus error, NACK, CRC) and were skipped.
    pub sensor_errors: u32,
    /// Frames sent again after an ack timeout.
    pub resent: u32,
    /// Corrupt frames received from the gateway.
    pub corrupt_frames: u32,
}

/// What a device channel measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel number used in Summary and Reading frames.
    pub channel: u8,
    /// The metric name (a valid series metric name).
    pub metric: heapless::String<32>,
    /// The unit, e.g. `degC`.
    pub unit: heapless::String<8>,
    /// The channel's quantum.
    pub quantum: Quantum,
    /// The reference offset of its fixed summaries.
    pub reference: i32,
}

/// Sent by a device at start and periodically: who it is and how it fares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The device id.
    pub device: DeviceName,
    /// Changes at every boot, so a reboot is never mistaken for time going back.
    pub boot: u32,
    /// Where this boot's unacknowledged data frames begin: the sequence of
    /// the oldest frame not yet acknowledged, or the next sequence when none
    /// waits. Every frame of the boot below it was acknowledged, or given up
    /// by the device (dropped from a full ring, merged into a neighbour),
    /// and is never sent again — so a receiver learns from the device itself
    /// which frames it may still see (DESIGN §4).
    pub first_unacked: u32,
    /// Firmware version text.
    pub firmware: heapless::String<16>,
    /// The device's window width in ms (0 in raw-reading mode).
    pub window_ms: u32,
    /// The device's monotonic clock when the frame was built (ms since boot).
    pub tick: u64,
    /// The channels.
    pub channels: heapless::Vec<ChannelInfo, MAX_CHANNELS>,
    /// Counters since boot.
    pub stats: DeviceStats,
}

/// One channel's summary over one device window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryFrame {
    /// The boot this frame belongs to.
    pub boot: u32,
    /// Per-boot frame sequence number.
    pub seq: u32,
    /// The channel.
    pub channel: u8,
    /// Window start on the device clock (ms since boot); summary times are
    /// offsets from it.
    pub start_tick: u64,
    /// Window width in ms.
    pub width_ms: u32,
    /// The summary.
    pub summary: FixedSummary,
}

/// One raw reading, for devices that do not aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingFrame {
    /// The boot this frame belongs to.
    pub boot: u32,
    /// Per-boot frame sequence number.
    pub seq: u32,
    /// The channel.
    pub channel: u8,
    /// When it was taken, on the device clock (ms since boot).
    pub tick: u64,
    /// The value in ticks of the channel's quantum.
    pub value: i32,
}

/// The gateway has durably applied frame `seq` of boot `boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The boot of the acknowledged frame.
    pub boot: u32,
    /// The acknowledged sequence number.
    pub seq: u32,
}

/// The gateway's wall clock, so device windows align to wall-clock multiples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSync {
    /// Milliseconds since the Unix epoch when the frame was sent.
    pub unix_ms: i64,
    /// The `tick` of the Hello this TimeSync answers (`None`: sent
    /// unprompted). A device adopts only answers, by their round trip
    /// (format version 3).
    pub hello_tick: Option<u64>,
}

/// Every message on the device link.
///
/// Variants are held inline: the device has no allocator to box them, and
/// builds one message at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Device → gateway: identity and status.
    Hello(Hello),
    /// Device → gateway: a closed window of one channel.
    Summary(SummaryFrame),
    /// Device → gateway: one raw reading.
    Reading(ReadingFrame),
    /// Gateway → device: a frame is durably applied.
    Ack(Ack),
    /// Gateway → device: wall-clock time.
    TimeSync(TimeSync),
}

/// Encodes `msg` as one delimited frame into `out`; returns the bytes written.
pub fn encode(msg: &Message, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut raw = [0u8; MAX_PAYLOAD - 5];
    let payload = postcard::to_slice(msg, &mut raw).map_err(|_| FrameError::Oversized)?;
    encode_payload(payload, out)
}

/// Frames `payload`, the postcard bytes of a [`Message`], as one delimited
/// frame into `out` (version, CRC, COBS, delimiter); returns the bytes
/// written. [`encode`] is serialization plus this.
///
/// For senders that serialize the few kinds they send themselves (a device
/// sends Summary and Reading frames, and need not link the serializer of
/// every kind); the inverse of [`payload_in_place`].
pub fn encode_payload(payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    if payload.len() > MAX_PAYLOAD - 5 {
        return Err(FrameError::Oversized);
    }
    let mut digest = CRC.digest();
    digest.update(&[FRAME_VERSION]);
    digest.update(payload);
    let crc = digest.finalize().to_le_bytes();
    let mut enc = cobs::CobsEncoder::new(out);
    for part in [&[FRAME_VERSION][..], payload, &crc] {
        enc.push(part).map_err(|_| FrameError::BufferTooSmall)?;
    }
    let n = enc.finalize();
    *out.get_mut(n).ok_or(FrameError::BufferTooSmall)? = 0;
    Ok(n + 1)
}

/// Decodes one COBS-encoded frame (without its delimiter) in place.
pub fn decode_in_place(frame: &mut [u8]) -> Result<Message, FrameError> {
    payload_in_place(frame).and_then(message_from_payload)
}

/// The message in the postcard bytes `payload`, which it must fill exactly.
fn message_from_payload(payload: &[u8]) -> Result<Message, FrameError> {
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::Malformed),
    }
}

/// Checks one COBS-encoded frame (without its delimiter) in place — COBS,
/// length, CRC, version — and returns the postcard bytes of its [`Message`].
///
/// For receivers that accept only some message kinds and parse the payload
/// themselves (a device needs only Ack and TimeSync, and need not link the
/// deserializer of every kind); [`decode_in_place`] is this plus parsing.
pub fn payload_in_place(frame: &mut [u8]) -> Result<&[u8], FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversized);
    }
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    let raw = frame.get(..n).ok_or(FrameError::Cobs)?;
    if raw.len() < 5 {
        return Err(FrameError::Truncated);
    }
    let (data, tail) = raw.split_at(raw.len() - 4);
    let received = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = CRC.checksum(data);
    if computed != received {
        return Err(FrameError::Crc { computed, received });
    }
    if data[0] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(data[0]));
    }
    Ok(&data[1..])
}

/// Splits a byte stream into frames with a fixed `N`-byte buffer.
///
/// Feed it bytes as they arrive; each `0x00` delimiter yields the decoded
/// message or the reason the frame was rejected. A frame longer than `N`
/// is discarded up to its delimiter and reported as [`FrameError::Oversized`].
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    /// Feeds one byte; returns a result when it completes a frame.
    #[inline]
    pub fn push(&mut self, byte: u8) -> Option<Result<Message, FrameError>> {
        self.push_payload(byte)
            .map(|r| r.and_then(message_from_payload))
    }

    /// As [`FrameDecoder::push`], but a complete, valid frame yields its
    /// checked postcard payload (see [`payload_in_place`]) instead of the
    /// parsed message.
    #[inline]
    pub fn push_payload(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
        if byte != 0 {
            match self.buf.get_mut(self.len) {
                Some(slot) if !self.overflowed => {
                    *slot = byte;
                    self.len += 1;
                }
                _ => self.overflowed = true,
            }
            return None;
        }
        let (len, overflowed) = (self.len, self.overflowed);
        self.len = 0;
        self.overflowed = false;
        if overflowed {
            return Some(Err(FrameError::Oversized));
        }
        if len == 0 {
            return None; // back-to-back delimiters: idle line
        }
        Some(payload_in_place(&mut self.buf[..len]))
    }

    /// Bytes of an unfinished frame currently buffered.
    pub fn pending(&self) -> usize {
        self.len
    }
}
