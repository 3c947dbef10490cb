//! Real metrics databases from the distribution, each in a temp dir on a
//! free 127.0.0.1 port, killed on drop: [`Prometheus`] (remote-write
//! receiver and native histograms enabled), [`VictoriaMetrics`] and
//! [`InfluxDb`] (1.x). Each `start` waits until the server answers its
//! readiness URL (up to 30 s) and fails if the process exits first.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A server process, killed on drop.
#[derive(Debug)]
struct Server {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Spawns `cmd` (already given its args) and waits until
    /// `GET {ready_path}` answers 2xx.
    fn spawn(
        name: &str,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        ready_path: &str,
    ) -> io::Result<Server> {
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::other(format!(
                    "starting {name}: {e} (run ./scripts/test.sh, which installs it)"
                ))
            })?;
        let mut s = Server {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = s.child.try_wait()? {
                let log =
                    std::fs::read_to_string(s._dir.path().join("server.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{name} exited early with {status}: {log}"
                )));
            }
            if get_status(port, ready_path).is_some_and(|c| (200..300).contains(&c)) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("{name} not ready in 30 s")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path` on 127.0.0.1:`port` (HTTP/1.0), if any.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn tempdir() -> io::Result<tempfile::TempDir> {
    tempfile::tempdir()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A real Prometheus (Debian's `prometheus`) with the remote-write receiver
/// and native histograms enabled, scraping nothing.
#[derive(Debug)]
pub struct Prometheus(Server);

impl Prometheus {
    /// Starts it; `extra` are further command-line flags.
    pub fn start(extra: &[&str]) -> io::Result<Prometheus> {
        let dir = tempdir()?;
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
        )?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", path(&config)))
            .arg(format!(
                "--storage.tsdb.path={}",
                path(&dir.path().join("data"))
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--enable-feature=native-histograms")
            .arg("--log.level=warn")
            .args(extra);
        Server::spawn("prometheus", cmd, port, dir, "/-/ready").map(Prometheus)
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}

/// A real VictoriaMetrics (Debian's `victoria-metrics`, single node).
#[derive(Debug)]
pub struct VictoriaMetrics(Server);

impl VictoriaMetrics {
    /// Starts it.
    pub fn start() -> io::Result<VictoriaMetrics> {
        let dir = tempdir()?;
        let port = free_port();
        let mut cmd = Command::new("victoria-metrics");
        cmd.arg(format!(
            "-storageDataPath={}",
            path(&dir.path().join("data"))
        ))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-loggerLevel=WARN")
        // Accept windows of any age a test writes (the default refuses
        // older than the retention, 1 month).
        .arg("-retentionPeriod=100y");
        Server::spawn("victoria-metrics", cmd, port, dir, "/health").map(VictoriaMetrics)
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}

/// A real InfluxDB 1.x (Debian's `influxdb`, `influxd`), HTTP only.
#[derive(Debug)]
pub struct InfluxDb(Server);

impl InfluxDb {
    /// Starts it.
    pub fn start() -> io::Result<InfluxDb> {
        let dir = tempdir()?;
        let port = free_port();
        let d = dir.path();
        let config = d.join("influxdb.conf");
        std::fs::write(
            &config,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{}\"\n\
                 [meta]\n  dir = \"{}\"\n\
                 [data]\n  dir = \"{}\"\n  wal-dir = \"{}\"\n  query-log-enabled = false\n\
                 [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
                 [monitor]\n  store-enabled = false\n",
                free_port(),
                path(&d.join("meta")),
                path(&d.join("data")),
                path(&d.join("wal")),
            ),
        )?;
        let mut cmd = Command::new("influxd");
        cmd.arg("-config").arg(&config);
        Server::spawn("influxd", cmd, port, dir, "/ping").map(InfluxDb)
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}
