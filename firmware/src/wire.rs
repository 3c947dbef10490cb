//! The device's own payload parsers: only the message kinds it accepts.
//!
//! [`Message`]'s full deserializer (Hello with its strings and channel list,
//! Reading, …) is several KiB of code a device never needs. The device
//! parses a checked frame payload (`frame::payload_in_place`) as one of these
//! mirrors of `Message` instead: same variants in the same order (postcard
//! encodes the variant index), with the kinds the device refuses typed as
//! [`Refused`], which fails without reading anything — postcard payloads
//! cannot be skipped, and a device has no use for them.

use serde::de::{Deserialize, Deserializer, Error as _};
use tributary_core::frame::{Ack, Message, SummaryFrame, TimeSync};

/// A message kind this parser does not accept.
#[derive(Debug)]
pub(crate) struct Refused;

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom("message kind not accepted here"))
    }
}

/// Gateway → device messages, in [`Message`]'s variant order.
#[derive(Debug, serde::Deserialize)]
pub(crate) enum Downlink {
    Hello(Refused),
    Summary(Refused),
    Reading(Refused),
    Ack(Ack),
    TimeSync(TimeSync),
}

/// A Summary frame the device stored itself, in [`Message`]'s variant order.
// Only ever a temporary on the stack while coarsening.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, serde::Deserialize)]
pub(crate) enum Stored {
    Hello(Refused),
    Summary(SummaryFrame),
}

/// The gateway → device message in `payload` (which it must fill exactly),
/// or `None` for anything else.
pub(crate) fn downlink(payload: &[u8]) -> Option<Message> {
    match postcard::take_from_bytes::<Downlink>(payload) {
        Ok((Downlink::Ack(a), [])) => Some(Message::Ack(a)),
        Ok((Downlink::TimeSync(t), [])) => Some(Message::TimeSync(t)),
        _ => None,
    }
}

/// The Summary frame in `payload` (which it must fill exactly), or `None`.
pub(crate) fn stored_summary(payload: &[u8]) -> Option<SummaryFrame> {
    match postcard::take_from_bytes::<Stored>(payload) {
        Ok((Stored::Summary(f), [])) => Some(f),
        _ => None,
    }
}
