//! The collector's TOML config (`tributary-collector --config`): any
//! text, with and without `TRIBUTARY_*` overrides taken from the input.
//! What loads is valid (validates again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // After a NUL: `NAME=value` lines as environment overrides.
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("TRIBUTARY_{k}"), v.to_string()))
        .collect();
    for config in [
        Config::from_toml(toml),
        Config::from_toml_with_env(toml, env),
    ] {
        if let Ok(c) = config {
            assert!(c.validate().is_ok());
            let _ = c.db_path();
        }
    }
});
