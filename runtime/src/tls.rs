//! The TLS client settings every outgoing connection of the daemons uses
//! (the agent's uplink, the collector's broker and PostgreSQL connections):
//! rustls with the *ring* provider, trusting either the certificates of one
//! PEM file or the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read, parsed or holds no certificate.
    #[error("{key} {path}: {reason}")]
    Ca {
        /// The config key that named the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates to trust: those of `ca_file` (PEM; `key` is the config
/// key that names it, for errors), or the system's roots when `None`.
pub fn roots(ca_file: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        for cert in rustls_native_certs::load_native_certs().certs {
            // A system certificate rustls cannot use is skipped, as every
            // TLS client does; the others still verify.
            let _ = roots.add(cert);
        }
        return Ok(roots);
    };
    let ca = |reason: String| TlsError::Ca {
        key: key.to_string(),
        path: path.to_owned(),
        reason,
    };
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca(e.to_string()))?)
            .map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("no certificate in the file".into()));
    }
    Ok(roots)
}

/// A rustls client configuration verifying servers against [`roots`].
pub fn client_config(ca_file: Option<&Path>, key: &str) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file, key)?)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing), "uplink.ca_file").unwrap_err();
        assert!(e.to_string().starts_with("uplink.ca_file "), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty), "mqtt.ca_file").unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    #[test]
    fn the_system_roots_are_the_default() {
        assert!(client_config(None, "x").is_ok());
    }
}
