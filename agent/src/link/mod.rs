//! The device link (DESIGN §5): per-device state and frame de-duplication.
//!
//! - [`dedupe`] — which (device, boot, seq) frames were applied.
//! - [`device`] — a device boot's channels, clock offset and frame handling.
pub mod dedupe;
pub mod device;
