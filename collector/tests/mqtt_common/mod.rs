//! Brokers and log capture for the ingest tests: mosquitto run with a
//! config of the test's own (password file and ACL; a TLS listener with a
//! certificate made by `openssl`), and the log lines of a test captured.
#![allow(clippy::unwrap_used, dead_code)]

pub(crate) mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_testkit::free_port;

/// A mosquitto run with a config of the test's own (killed on drop).
pub(crate) struct OwnBroker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnBroker {
    /// Writes `conf` (plus `user root`, so mosquitto started as root can
    /// read the files in `dir`) and starts mosquitto; waits until every
    /// port in `ports` accepts connections.
    pub(crate) fn start(dir: tempfile::TempDir, conf: &str, ports: &[u16]) -> OwnBroker {
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, format!("{conf}persistence false\nuser root\n")).unwrap();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while ports
            .iter()
            .any(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
        {
            assert!(start.elapsed() < Duration::from_secs(10), "broker not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnBroker { child, _dir: dir }
    }
}

/// A mosquitto requiring a login: users `collector` (password
/// `collector-pw`, reads every agent's batches, writes confirmations) and
/// `agent-a` (password `agent-pw`, its own topics only). Returns it and its
/// port.
pub(crate) fn secure_broker() -> (OwnBroker, u16) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let passwd = d.join("passwd");
    for (i, (user, pw)) in [("collector", "collector-pw"), ("agent-a", "agent-pw")]
        .iter()
        .enumerate()
    {
        let mut c = Command::new("mosquitto_passwd");
        c.arg("-b");
        if i == 0 {
            c.arg("-c");
        }
        assert!(c.arg(&passwd).args([user, pw]).status().unwrap().success());
    }
    std::fs::write(
        d.join("acl"),
        "user collector\ntopic read tributary/v1/agents/+/partials\ntopic write tributary/v1/agents/+/acks\n\
         user agent-a\ntopic write tributary/v1/agents/agent-a/partials\ntopic read tributary/v1/agents/agent-a/acks\n",
    )
    .unwrap();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        d.join("acl").display()
    );
    (OwnBroker::start(dir, &conf, &[port]), port)
}

/// Log lines, captured.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log lines (the test runs on a current-thread
    /// runtime, so the ingest tasks log here too) until the guard drops.
    pub(crate) fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mosquitto with a plain listener (for the test agent) and a TLS one
/// (for the collector), its certificate issued for 127.0.0.1 by a CA made
/// here; returns the broker, the plain and the TLS port, and the CA file.
pub(crate) fn tls_broker() -> (OwnBroker, u16, u16, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    let (plain, tls) = (free_port(), free_port());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        d.join("server.crt").display(),
        d.join("server.key").display()
    );
    let ca = d.join("ca.crt");
    (OwnBroker::start(dir, &conf, &[plain, tls]), plain, tls, ca)
}
