//! The config targets' input: TOML text, then after a NUL `NAME=value`
//! lines taken as `TRIBUTARY_NAME` environment overrides.

/// The TOML text and the overrides in `data` (`None`: not UTF-8).
pub fn split(data: &[u8]) -> Option<(&str, Vec<(String, String)>)> {
    let text = std::str::from_utf8(data).ok()?;
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("TRIBUTARY_{k}"), v.to_string()))
        .collect();
    Some((toml, env))
}
