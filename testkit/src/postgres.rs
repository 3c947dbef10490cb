//! A real PostgreSQL server for tests: `initdb` into a temp dir, `postgres`
//! on 127.0.0.1 with a free port, stopped (immediate shutdown) on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the data
//! directory is handed to the `postgres` system user and both programs run
//! under it via `setpriv` (which `exec`s, so the child we hold is the
//! postmaster itself and stopping it cannot leave an orphan).

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How to configure the test server.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Keep PostgreSQL's durability settings (`fsync`, `synchronous_commit`,
    /// `full_page_writes`) on, as a production server has them. `false` (the
    /// default) turns them off: tests do not survive power loss and run
    /// faster; benchmarks set `true` to measure honest commits.
    pub durable: bool,
}

/// A running PostgreSQL server, stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    durable: bool,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The user the server runs as and connects as.
pub const USER: &str = "tributary";

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and
/// `postgres`.
fn bin_dir() -> io::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        io::Error::other(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/{initdb,postgres} \
             (scripts/test.sh installs the `postgresql` package)",
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Creates a cluster in a temp dir, starts the server on 127.0.0.1 and
    /// waits until it accepts connections (up to 30 s).
    pub fn start(options: PostgresOptions) -> io::Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()?;
            if !status.success() {
                return Err(io::Error::other(
                    "running as root, but cannot hand the data dir to the `postgres` user",
                ));
            }
        }
        let data = dir.path().join("data");
        let mut pg = Postgres {
            port: 0,
            bin,
            data,
            as_postgres,
            durable: options.durable,
            child: None,
            dir,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        pg.spawn()?;
        Ok(pg)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ]);
            c.arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.port = free_port();
            let durability = if self.durable {
                "fsync=on"
            } else {
                "fsync=off"
            };
            let sync_commit = if self.durable {
                "synchronous_commit=on"
            } else {
                "synchronous_commit=off"
            };
            // Without full-page images a crash during a page write can leave
            // a torn page that WAL replay cannot repair.
            let page_images = if self.durable {
                "full_page_writes=on"
            } else {
                "full_page_writes=off"
            };
            let child = self
                .command("postgres")
                .arg("-D")
                .arg(&self.data)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
                .arg(self.dir.path())
                .args(["-c", durability, "-c", sync_commit, "-c", page_images])
                .args(["-c", "max_connections=200"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.child = Some(child);
            match self.wait_ready(deadline) {
                Ok(()) => return Ok(()),
                // Port taken between choosing and binding: try another.
                Err(_) if Instant::now() < deadline && self.child.is_none() => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_ready(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let ready = Command::new(self.bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ready {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(io::Error::other(format!(
                        "postgres exited early with {status} (port {} taken?)",
                        self.port
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "postgres did not accept connections in 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A connection URL for database `db` (`postgres` always exists).
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The connection URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .arg(name)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url_for(name))
    }

    /// Runs one SQL command with `psql` against database `db`, returning its
    /// unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args([
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, like a crash
    /// that keeps what was committed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_a_database_and_stops() {
        let mut pg = Postgres::start(PostgresOptions::default()).unwrap();
        let port = pg.port();
        pg.create_database("t1").unwrap();
        assert_eq!(pg.psql("t1", "SELECT 40 + 2").unwrap(), "42");
        pg.stop();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
