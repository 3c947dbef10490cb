//! Modbus poll throughput against two servers — the pymodbus simulator
//! (PyPI), and a `tokio-modbus` server in this process (to see the agent's
//! own ceiling, not the simulator's) — median of three runs each, with a
//! bare client baseline measured in the same run:
//!
//! ```sh
//! cargo run --release -p tributary-agent --example modbus_bench -- [REGISTERS] [SECONDS]
//! ```
//!
//! The workload: one Modbus TCP device on 127.0.0.1 serving REGISTERS
//! (default 1000) adjacent uint16 holding registers (pymodbus: logging
//! off; tokio-modbus: register a holds a).
//! - bare: a plain `tokio-modbus` loop reading them in requests of 125,
//!   back to back, for SECONDS (default 5);
//! - agent: the agent (uplink off, windows in its SQLite store) polling the
//!   same device with `interval_ms = 1` (back to back: missed ticks are
//!   skipped) for SECONDS; registers/s = readings the engine accepted / s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio_modbus::client::Reader;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};
use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{free_port, ModbusSim};

fn spec(n: u16) -> String {
    let points: Vec<String> = (0..n)
        .map(|a| format!(r#"{{"metric":"r{a}","address":{a},"type":"uint16"}}"#))
        .collect();
    format!(
        r#"{{"unit":1,"log":false,"points":[{}]}}"#,
        points.join(",")
    )
}

/// Holding register `a` holds `a`; anything else is an illegal function.
struct Registers;

impl tokio_modbus::server::Service for Registers {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(
                (0..n).map(|i| a.wrapping_add(i)).collect(),
            )),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// A tokio-modbus TCP server on a free port, serving until the process ends.
async fn tokio_modbus_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let on_connected = |stream, addr| async move {
            accept_tcp_connection(stream, addr, |_| Ok(Some(Registers)))
        };
        Server::new(listener)
            .serve(&on_connected, |e| eprintln!("tokio-modbus server: {e}"))
            .await
            .unwrap();
    });
    port
}

async fn bare(port: u16, n: u16, secs: u64) -> f64 {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // Unit 1, as the agent's default `unit` (pymodbus serves only its device id).
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut regs = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let mut a = 0u16;
        while a < n {
            let c = (n - a).min(125);
            regs += ctx
                .read_holding_registers(a, c)
                .await
                .unwrap()
                .unwrap()
                .len() as u64;
            a += c;
        }
    }
    regs as f64 / t0.elapsed().as_secs_f64()
}

async fn agent(port: u16, n: u16, secs: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let regs: String = (0..n)
        .map(|a| format!("[[modbus.registers]]\nmetric = \"r{a}\"\naddress = {a}\n"))
        .collect();
    let toml = format!(
        "agent_id = \"bench\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n\
         [[modbus]]\nname = \"plc\"\ntcp = \"127.0.0.1:{port}\"\ninterval_ms = 1\n{regs}",
        dir.path().display().to_string()
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    // Warm up: the first poll connects and registers the series.
    while agent.counters().readings_accepted < u64::from(n) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (r0, t0) = (agent.counters().readings_accepted, Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (agent.counters().readings_accepted - r0) as f64 / t0.elapsed().as_secs_f64();
    agent.shutdown().await.unwrap();
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median of 3 runs (bare, agent) against the server on `port`.
async fn measure(server: &str, port: u16, n: u16, secs: u64) {
    let (mut b, mut a) = (Vec::new(), Vec::new());
    for run in 0..3 {
        b.push(bare(port, n, secs).await);
        a.push(agent(port, n, secs).await);
        println!(
            "{server} run {}: bare {:.0} registers/s, agent {:.0} registers/s",
            run + 1,
            b[run],
            a[run]
        );
    }
    println!(
        "{server}: median of 3 ({n} uint16 holding registers, {secs} s each): \
         bare tokio-modbus {:.0} registers/s, agent {:.0} registers/s",
        median(b),
        median(a)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u16 = args.next().map_or(1000, |a| a.parse().unwrap());
    let secs: u64 = args.next().map_or(5, |a| a.parse().unwrap());
    let port = free_port();
    let sim = ModbusSim::tcp(&spec(n), port).unwrap();
    measure("pymodbus", port, n, secs).await;
    drop(sim);
    measure("tokio-modbus server", tokio_modbus_server().await, n, secs).await;
}
