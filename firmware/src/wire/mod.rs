//! The device's own codec for the few message kinds it handles, written
//! against the postcard wire format by hand.
//!
//! [`Message`]'s serde code — and even serde's for just the kinds a device
//! handles — is several KiB of flash: generic visitors and serializers with
//! an error path per field. A device only sends Hello, Summary and Reading frames
//! ([`write`]) and only reads Ack, TimeSync and its own stored Summary
//! frames ([`read`]); framing (version, CRC, COBS) stays in
//! `tributary_core::frame` (`encode_payload`, `payload_in_place`). The bytes
//! are exactly `tributary_core::frame::encode`'s and the parses exactly
//! serde's, which the tests check against core on random and corrupted
//! frames.
//!
//! [`Message`]: tributary_core::frame::Message

mod read;
mod write;

pub(crate) use read::{downlink, stored_summary};
pub(crate) use write::{encode_hello, encode_reading, encode_summary};

/// `Message`'s variant index of a Hello.
const HELLO: u64 = 0;
/// `Message`'s variant index of a Summary frame (postcard encodes the index).
const SUMMARY: u64 = 1;
/// `Message`'s variant index of a Reading frame.
const READING: u64 = 2;
/// `Message`'s variant index of an Ack.
const ACK: u64 = 3;
/// `Message`'s variant index of a TimeSync.
const TIME_SYNC: u64 = 4;
