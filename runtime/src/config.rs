//! Configuration files both daemons share the handling of: TOML text with
//! unknown keys refused (each struct's `deny_unknown_fields`),
//! `TRIBUTARY_*` environment overrides, and one error type that names the
//! key of every problem — all problems of a file at once.
//!
//! Environment overrides: `TRIBUTARY_<KEY>` sets a top-level key and
//! `TRIBUTARY_<SECTION>_<KEY>` a key of one of the sections the daemon
//! names, e.g. `TRIBUTARY_AGENT_ID=gw-2`, `TRIBUTARY_UPLINK_PORT=1884`. The
//! value is read as a TOML value (`8`, `true`, `"text"`), or as a string if
//! it is not one; in a *text section* (a table of free-form strings, such
//! as the agent's `[tags]`) it is always a string.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// A key has the wrong type or is unknown.
    #[error("config key `{key}`: {reason}")]
    Key {
        /// The dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// One or more values are invalid (all reported at once).
    #[error("invalid config:\n{}", .0.iter().map(|(k, r)| format!("  `{k}`: {r}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<(String, String)>),
}

/// The problems found while validating a configuration, each with its key;
/// [`Problems::finish`] turns them into one [`ConfigError::Invalid`].
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    /// Records that `key` is invalid because of `reason`.
    pub fn bad(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push((key.into(), reason.into()));
    }

    /// Records a check of `key`: `Err(reason)` is a problem.
    pub fn check<E: std::fmt::Display>(&mut self, key: impl Into<String>, r: Result<(), E>) {
        if let Err(e) = r {
            self.bad(key, e.to_string());
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` if nothing was found, else every problem at once.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// A daemon's rules for environment overrides.
#[derive(Debug, Clone, Copy)]
pub struct EnvRules<'a> {
    /// The tables `TRIBUTARY_<SECTION>_<KEY>` may address.
    pub sections: &'a [&'a str],
    /// Sections whose values are always strings.
    pub text_sections: &'a [&'a str],
}

/// Reads a config file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses TOML `text` into `T` after applying the `TRIBUTARY_*` variables
/// of `env` by `rules`; a wrong type or an unknown key is named by its path.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    rules: EnvRules<'_>,
) -> Result<T, ConfigError> {
    let mut root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("TRIBUTARY_") else {
            continue;
        };
        apply_override(&mut root, &rest.to_ascii_lowercase(), value, rules)?;
    }
    serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Key {
            key: if key == "." { "(root)".into() } else { key },
            reason: e.into_inner().to_string(),
        }
    })
}

fn apply_override(
    root: &mut toml::Table,
    rest: &str,
    value: String,
    rules: EnvRules<'_>,
) -> Result<(), ConfigError> {
    let section = rules
        .sections
        .iter()
        .find(|s| rest.starts_with(&format!("{s}_")) && rest.len() > s.len() + 1);
    let value = if section.is_some_and(|s| rules.text_sections.contains(s)) {
        toml::Value::String(value)
    } else {
        env_value(&value)
    };
    let Some(s) = section else {
        root.insert(rest.to_string(), value);
        return Ok(());
    };
    let entry = root
        .entry((*s).to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(rest[s.len() + 1..].to_string(), value);
            Ok(())
        }
        _ => Err(ConfigError::Key {
            key: (*s).to_string(),
            reason: "is not a table".into(),
        }),
    }
}

/// An environment value as TOML (`8`, `true`, `"x"`), else as a string.
fn env_value(v: &str) -> toml::Value {
    format!("x = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("x"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

/// A secret from a config file or the environment; its `Debug` never shows
/// it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a password comes from; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// The password itself (from the config file or the environment).
    Value(String),
    /// A file holding it (one line; a trailing newline is ignored), read at
    /// every use so a changed password needs no restart.
    File(PathBuf),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Value(_) => f.write_str("Value(<redacted>)"),
            Password::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Password {
    /// The password text now; `key` names the config key of a file that
    /// cannot be read.
    pub fn resolve(&self, key: &str) -> Result<String, String> {
        match self {
            Password::Value(v) => Ok(v.clone()),
            Password::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("{key} {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        id: String,
        #[serde(default)]
        net: Net,
        #[serde(default)]
        tags: std::collections::BTreeMap<String, String>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Net {
        port: u16,
        tls: bool,
    }

    const RULES: EnvRules<'static> = EnvRules {
        sections: &["net", "tags"],
        text_sections: &["tags"],
    };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_keys_of_the_root_and_of_sections() {
        let c: Cfg = parse(
            "id = \"a\"\n[net]\nport = 1\n",
            env(&[
                ("TRIBUTARY_ID", "b"),
                ("TRIBUTARY_NET_PORT", "1884"),
                ("TRIBUTARY_NET_TLS", "true"),
                ("TRIBUTARY_TAGS_SITE", "42"),
                ("OTHER_ID", "c"),
            ]),
            RULES,
        )
        .unwrap();
        assert_eq!(c.id, "b");
        assert_eq!(c.net.port, 1884);
        assert!(c.net.tls);
        // A text section keeps "42" a string.
        assert_eq!(c.tags["site"], "42");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse::<Cfg>("id = \"a\"\n[net]\nprot = 1\n", env(&[]), RULES).unwrap_err();
        assert!(e.to_string().contains("net"), "{e}");
        assert!(e.to_string().contains("prot"), "{e}");
        let e = parse::<Cfg>("id = 1", env(&[]), RULES).unwrap_err();
        assert!(e.to_string().contains("`id`"), "{e}");
        let e = parse::<Cfg>("id = ", env(&[]), RULES).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)), "{e}");
    }

    #[test]
    fn problems_are_reported_together() {
        let mut p = Problems::default();
        assert!(p.is_empty());
        p.bad("a.b", "must be > 0");
        p.check("c", Err::<(), _>("bad"));
        p.check("d", Ok::<(), &str>(()));
        let e = p.finish().unwrap_err().to_string();
        assert!(
            e.contains("`a.b`: must be > 0") && e.contains("`c`: bad"),
            "{e}"
        );
        assert!(!e.contains("`d`"), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<redacted>");
        let p = Password::Value("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(p.resolve("x").unwrap(), "hunter2");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(Password::File(f.clone()).resolve("x").unwrap(), "s3cret");
        let e = Password::File(dir.path().join("none"))
            .resolve("mqtt.password_file")
            .unwrap_err();
        assert!(e.starts_with("mqtt.password_file"), "{e}");
    }
}
