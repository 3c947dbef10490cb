//! The device link (DESIGN §5): what devices send and the per-device state
//! the agent keeps to apply it exactly once.
//!
//! - [`json`] — the JSON readings format of devices on the local broker.
//! - [`clock`] — a device boot's clock offset and drift from arrival times.
//! - [`dedupe`] — which (device, boot, seq) frames were applied.
//! - [`device`] — a device boot's channels, clock mapping and frame handling.
pub mod clock;
pub mod dedupe;
pub mod device;
pub mod json;
