//! The agent's TOML config (`tributary-agent --config`): any text, with and
//! without `TRIBUTARY_*` overrides taken from the input. What loads is
//! valid (validates again) and its derived values compute without a panic.
#![no_main]

#[path = "config_input.rs"]
mod config_input;

use libfuzzer_sys::fuzz_target;
use tributary_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    let Some((toml, env)) = config_input::split(data) else {
        return;
    };
    for config in [
        Config::from_toml(toml),
        Config::from_toml_with_env(toml, env),
    ] {
        if let Ok(c) = config {
            assert!(c.validate().is_ok());
            let _ = c.warnings();
            let _ = c.series_bound();
            let _ = c.global_tags();
            let _ = c.db_path();
        }
    }
});
