//! `[[modbus]]`: one Modbus device (TCP or RTU) per table, with its
//! `[[modbus.registers]]`, each a series `{metric}` of device `{name}`.
//!
//! Every key is documented with its default in `config/agent.toml`.

use std::path::PathBuf;

use serde::Deserialize;
use tributary_core::series::validate_id;
use tributary_core::Quantum;
use tributary_runtime::config::Problems;

use crate::sources::scaling::Scaling;

/// `[[modbus]]`: one device, polled by a task of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// The device id of its series (required).
    pub name: String,
    /// Modbus TCP: `host:port` (an IP address; one of `tcp`/`serial`).
    #[serde(default)]
    pub tcp: Option<String>,
    /// Modbus RTU: the serial port (RS-485 adapter), e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub serial: Option<PathBuf>,
    /// RTU baud rate. Default 9600.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// RTU parity: `"none"`, `"even"` (the Modbus default) or `"odd"`.
    /// Default `"even"`.
    #[serde(default)]
    pub parity: Parity,
    /// RTU stop bits, 1 or 2. Default 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Unit (slave) id, 0..=247. Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Poll interval (ms). Default 1000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Longest wait for one response (ms). Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most registers per read request (1..=125). Default 125.
    #[serde(default = "default_max_batch")]
    pub max_batch: u16,
    /// The registers polled (at least one).
    #[serde(default)]
    pub registers: Vec<RegisterConfig>,
}

/// RTU parity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus RTU default).
    #[default]
    Even,
    /// Odd parity.
    Odd,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (function 3).
    Holding,
    /// Input registers (function 4).
    Input,
    /// Coils (function 1): one bit, value 0 or 1.
    Coil,
    /// Discrete inputs (function 2): one bit, value 0 or 1.
    Discrete,
}

impl Table {
    /// Whether the table holds bits rather than 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

/// How a register's words are read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One word, signed.
    Int16,
    /// One word, unsigned.
    Uint16,
    /// Two words, signed.
    Int32,
    /// Two words, unsigned.
    Uint32,
    /// Four words, signed.
    Int64,
    /// Four words, unsigned.
    Uint64,
    /// Two words, IEEE 754 single.
    Float32,
    /// Four words, IEEE 754 double.
    Float64,
}

impl DataType {
    /// Words (16-bit registers) it spans.
    pub fn words(self) -> u16 {
        match self {
            DataType::Int16 | DataType::Uint16 => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 4,
        }
    }

    /// Whether the value is a float (scaled through the quantum's rounding).
    pub fn is_float(self) -> bool {
        matches!(self, DataType::Float32 | DataType::Float64)
    }
}

/// Byte order within a word, or word order within a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (the Modbus standard). Default.
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// `[[modbus.registers]]`: one value, one series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The series' metric name (required).
    pub metric: String,
    /// `"holding"`, `"input"`, `"coil"` or `"discrete"`. Default `"holding"`.
    #[serde(default = "default_table")]
    pub table: Table,
    /// The first register's address, 0-based (required).
    pub address: u16,
    /// `int16`, `uint16`, `int32`, `uint32`, `int64`, `uint64`, `float32`,
    /// `float64`. Default `uint16`; ignored for coils and discrete inputs.
    #[serde(default = "default_type", rename = "type")]
    pub data_type: DataType,
    /// Byte order within each word. Default `"big"`.
    #[serde(default)]
    pub byte_order: Order,
    /// Word order: `"big"` = most significant word first. Default `"big"`.
    #[serde(default)]
    pub word_order: Order,
    /// value = raw × scale + offset, in the series' unit. Default 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Default 0.
    #[serde(default)]
    pub offset: f64,
    /// The series' quantum exponent: values are held as ticks of
    /// 10^quantum. Default 0 (whole units).
    #[serde(default)]
    pub quantum: i8,
}

fn default_baud() -> u32 {
    9600
}
fn default_stop_bits() -> u8 {
    1
}
fn default_unit() -> u8 {
    1
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_batch() -> u16 {
    125
}
fn default_table() -> Table {
    Table::Holding
}
fn default_type() -> DataType {
    DataType::Uint16
}
fn default_scale() -> f64 {
    1.0
}

impl RegisterConfig {
    /// Words (or bits) it spans.
    pub fn span(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.words()
        }
    }

    /// Its scaling into ticks, or why it cannot be exact.
    pub fn scaling(&self) -> Result<Scaling, String> {
        let q = Quantum::new(self.quantum).map_err(|e| e.to_string())?;
        let float = !self.table.is_bits() && self.data_type.is_float();
        Scaling::new(self.scale, self.offset, q, float)
    }
}

impl ModbusConfig {
    /// Records every invalid value in `p`; `i` is the table's index.
    pub fn check(&self, i: usize, p: &mut Problems) {
        let at = |k: &str| format!("modbus[{i}].{k}");
        p.check(at("name"), validate_id("device id", &self.name));
        match (&self.tcp, &self.serial) {
            (Some(addr), None) => {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    p.bad(at("tcp"), format!("{addr:?} is not an ip:port address"));
                }
            }
            (None, Some(_)) => {
                if self.baud == 0 {
                    p.bad(at("baud"), "must be > 0");
                }
                if !(1..=2).contains(&self.stop_bits) {
                    p.bad(at("stop_bits"), "must be 1 or 2");
                }
            }
            _ => p.bad(at("tcp"), "exactly one of tcp and serial must be set"),
        }
        if self.unit > 247 {
            p.bad(at("unit"), "must be 0..=247");
        }
        if self.interval_ms == 0 {
            p.bad(at("interval_ms"), "must be > 0");
        }
        if self.timeout_ms == 0 {
            p.bad(at("timeout_ms"), "must be > 0");
        }
        if !(4..=125).contains(&self.max_batch) {
            p.bad(at("max_batch"), "must be 4..=125");
        }
        if self.registers.is_empty() {
            p.bad(at("registers"), "at least one register");
        }
        let mut metrics = std::collections::BTreeSet::new();
        for (j, r) in self.registers.iter().enumerate() {
            let at = |k: &str| format!("modbus[{i}].registers[{j}].{k}");
            p.check(at("metric"), validate_id("metric", &r.metric));
            if !metrics.insert(r.metric.as_str()) {
                p.bad(
                    at("metric"),
                    "two registers of one device name the same metric",
                );
            }
            if u32::from(r.address) + u32::from(r.span()) > 65_536 {
                p.bad(at("address"), "the value runs past address 65535");
            }
            if let Err(e) = r.scaling() {
                p.bad(at("scale"), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(devices: &str) -> Result<Config, String> {
        Config::from_toml(&format!("agent_id = \"gw\"\n{devices}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_documented_device_loads() {
        let c = load(
            "[[modbus]]\nname = \"plc\"\ntcp = \"127.0.0.1:502\"\n\
             [[modbus.registers]]\nmetric = \"t\"\naddress = 3\ntype = \"int32\"\n\
             word_order = \"little\"\nscale = 0.1\nquantum = -1\n",
        )
        .unwrap();
        let d = &c.modbus[0];
        assert_eq!((d.unit, d.interval_ms, d.timeout_ms), (1, 1000, 1000));
        assert_eq!(d.registers[0].span(), 2);
        assert_eq!(c.series_bound().known, 1);
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let e = load(
            "[[modbus]]\nname = \"plc\"\ntcp = \"127.0.0.1:502\"\nserial = \"/dev/ttyS0\"\n\
             interval_ms = 0\n\
             [[modbus.registers]]\nmetric = \"t\"\naddress = 65535\ntype = \"int32\"\n\
             scale = 0.001\nquantum = -2\n\
             [[modbus.registers]]\nmetric = \"t\"\naddress = 0\n\
             [[modbus]]\nname = \"plc\"\ntcp = \"not an address\"\n",
        )
        .unwrap_err();
        for key in [
            "modbus[0].tcp",
            "modbus[0].interval_ms",
            "modbus[0].registers[0].address",
            "modbus[0].registers[0].scale",
            "modbus[0].registers[1].metric",
            "modbus[1].tcp",
            "modbus[1].registers",
            "modbus[1].name",
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        assert!(e.contains("finer than the quantum"), "{e}");
    }
}
