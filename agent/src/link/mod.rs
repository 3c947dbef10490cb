//! The device link (DESIGN §5): per-device state and frame de-duplication.
//!
//! - [`clock`] — a device boot's clock offset and drift from arrival times.
//! - [`dedupe`] — which (device, boot, seq) frames were applied.
//! - [`device`] — a device boot's channels, clock mapping and frame handling.
pub mod clock;
pub mod dedupe;
pub mod device;
