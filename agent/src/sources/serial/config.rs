//! `[[serial]]`: one serial device per table.

use std::path::PathBuf;

use serde::Deserialize;
use tributary_runtime::config::Problems;

/// `[[serial]]`: one serial device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port, e.g. `/dev/ttyUSB0` (required).
    pub path: PathBuf,
    /// Baud rate. Default 115 200.
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

impl SerialConfig {
    /// Records every invalid value in `p`; `i` is the table's index.
    pub fn check(&self, i: usize, p: &mut Problems) {
        if self.baud == 0 {
            p.bad(format!("serial[{i}].baud"), "must be > 0");
        }
    }
}
