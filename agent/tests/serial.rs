//! Serial devices over a pty pair: the tests drive the firmware's own
//! virtual device (real aggregator and link code) on the pty master, with
//! corrupt bytes in between; the agent reads the slave side. The device's
//! frames are acknowledged only after commit (its resend ring empties), the
//! agent's TimeSync reaches it, a corrupt frame is counted and costs nothing
//! else — also when bits flip inside real frames in both directions, the
//! boot's first data frame among them — and the partials upstream add up
//! exactly to the device's readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use tributary_agent::config::Config;
use tributary_agent::config::SimulatedConfig;
use tributary_agent::metrics::Reject;
use tributary_agent::Agent;
use tributary_core::frame::{DeviceStats, FrameDecoder, Message, MAX_FRAME};
use tributary_sim::SimDevice;
use tributary_testkit::{Mosquitto, MosquittoOptions};

/// A pty pair in raw mode: the slave's path (the agent's port), the
/// master, non-blocking (the device's end), and the slave, to keep open
/// while the test runs.
fn pty() -> (PathBuf, File, OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).unwrap();
    // Raw mode on the master side too, so no byte is translated.
    let mut t = nix::sys::termios::tcgetattr(&pty.master).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.master, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    (slave_path, File::from(pty.master), pty.slave)
}

/// What the wire does to the bytes: `to_agent` gets each step's frames
/// (whole, with their delimiters) at device tick `t` and returns what the
/// agent reads; `to_device` may change what the device reads.
struct Wire<A, D> {
    to_agent: A,
    to_device: D,
}

/// What became of the device.
struct Run {
    pending: usize,
    stats: DeviceStats,
    acks: u32,
    time_syncs: u32,
}

/// Runs the first device of `sim` to its end on `master` through `wire`,
/// until every frame is acked (or 30 s pass). The caller keeps `master`
/// open afterwards for as long as the agent may still be reading: closing
/// a pty master hangs up its slave, which discards the bytes it holds.
fn drive<A, D>(sim: &SimulatedConfig, master: &mut File, mut wire: Wire<A, D>) -> Run
where
    A: FnMut(u64, Vec<u8>) -> Vec<u8>,
    D: FnMut(&mut [u8]),
{
    let spec = SimDevice::all(sim).remove(0);
    let mut dev = spec.device().unwrap();
    let last = spec.last_tick().unwrap();
    let (mut t, mut stopped) = (0u64, false);
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let (mut acks, mut time_syncs) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rbuf = [0u8; 1024];
    while !(stopped && dev.pending() == 0) && Instant::now() < deadline {
        if stopped || dev.pending() < 12 {
            let mut bytes = dev.step(t);
            if !stopped && t >= last {
                dev.flush();
                stopped = true;
                bytes.extend(dev.step(t));
            }
            master.write_all(&(wire.to_agent)(t, bytes)).unwrap();
            t += spec.period_ms();
        }
        match master.read(&mut rbuf) {
            Ok(n) => {
                let got = &mut rbuf[..n];
                (wire.to_device)(got);
                for &b in got.iter() {
                    match dec.push(b) {
                        Some(Ok(Message::Ack(_))) => acks += 1,
                        Some(Ok(Message::TimeSync(_))) => time_syncs += 1,
                        _ => {}
                    }
                }
                dev.receive(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("{e}"),
        }
    }
    Run {
        pending: dev.pending(),
        stats: dev.stats(),
        acks,
        time_syncs,
    }
}

/// Starts an agent reading the serial port `port`, uplinked to `broker_port`.
async fn serial_agent(
    dir: &std::path::Path,
    broker_port: u16,
    port: &std::path::Path,
) -> tributary_agent::AgentHandle {
    let no_sim = sim_config(0, 0, 0, 0);
    let extra = format!(
        "[[serial]]\npath = {:?}\nbaud = 115200\n",
        port.display().to_string()
    );
    let cfg = Config::from_toml(&agent_toml(dir, broker_port, &no_sim, &extra)).unwrap();
    Agent::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_device_frames_are_acked_after_commit_and_add_up() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let (slave_path, mut master, _slave) = pty();

    // The device: the firmware's virtual device, 6 windows of 5 samples.
    let sim = sim_config(1, 6, 0, 0);
    let expected: u64 = truth(&sim, 5000).values().map(|v| v.0).sum();
    let agent = serial_agent(dir.path(), broker.port(), &slave_path).await;
    let metrics = agent.metrics();

    let sim2 = sim.clone();
    let device = tokio::task::spawn_blocking(move || {
        let mut corrupted = false;
        let wire = Wire {
            to_agent: |t: u64, mut bytes: Vec<u8>| {
                if !corrupted && t > 2000 {
                    // A corrupt frame: garbage up to a delimiter.
                    bytes.extend_from_slice(&[0x05, 0xFF, 0x13, 0x37, 0x00]);
                    corrupted = true;
                }
                bytes
            },
            to_device: |_: &mut [u8]| {},
        };
        (drive(&sim2, &mut master, wire), master)
    });
    let (run, _master) = device.await.unwrap();
    assert_eq!(run.pending, 0, "every frame acknowledged");
    assert_eq!(run.stats.dropped_readings, 0);
    assert!(
        run.acks >= 3 * 6,
        "at least one ack per summary frame: {}",
        run.acks
    );
    assert!(run.time_syncs >= 1, "the agent answers Hello with TimeSync");
    assert_eq!(metrics.rejected(Reject::CorruptFrame), 1);
    // The device's clock is estimated from arrivals and exposed per device.
    let fit = metrics
        .clock("sim-0")
        .expect("a clock estimate for the serial device");
    assert!(fit.error_ms.is_finite() && fit.error_ms >= 1.0, "{fit:?}");
    assert!(metrics
        .render()
        .contains("tributary_agent_device_clock_error_ms{device=\"sim-0\"}"));

    let got = tokio::task::spawn_blocking(move || {
        (
            collector.wait_for(expected, Duration::from_secs(30)),
            collector,
        )
    })
    .await
    .unwrap();
    assert_eq!(got.0, expected);
    let truth = per_series(&truth(&sim, 5000));
    assert_eq!(per_series(&got.1.totals()), truth);
    agent.shutdown().await.unwrap();
}

/// Flips one bit of a frame's body (never its delimiter, never into a zero
/// byte, which would split it), at a place `rng` picks.
fn flip_a_bit(frame: &mut [u8], rng: &mut u64) {
    *rng = rng
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let r = (*rng >> 33) as usize;
    let body = frame.len() - 1;
    let at = r % body;
    let bit = (r / body) % 8;
    frame[at] ^= 1 << bit;
    if frame[at] == 0 {
        frame[at] ^= 1 << ((bit + 1) % 8);
    }
}

/// The frames of a chunk of bytes, each with its delimiter (a chunk from
/// the device ends with one).
fn frames_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_corrupted_on_the_wire_are_resent_and_applied_exactly_once() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let (slave_path, mut master, _slave) = pty();
    let sim = sim_config(1, 8, 0, 0);
    let expected: u64 = truth(&sim, 5000).values().map(|v| v.0).sum();
    let agent = serial_agent(dir.path(), broker.port(), &slave_path).await;
    let metrics = agent.metrics().clone();

    let sim2 = sim.clone();
    let device = tokio::task::spawn_blocking(move || {
        // Bits flip in the boot's first data frame — its resend arrives
        // after the frames behind it — and in every fourth data frame
        // after it, resends included; and in every third chunk of acks.
        let (mut data_frames, mut corrupted) = (0u64, 0u64);
        let mut chunks = 0u64;
        let (mut rng_up, mut rng_down) = (7u64, 11u64);
        let wire = Wire {
            to_agent: |_: u64, bytes: Vec<u8>| {
                let mut out = Vec::with_capacity(bytes.len());
                for mut f in frames_of(&bytes) {
                    let mut d = FrameDecoder::<MAX_FRAME>::new();
                    let is_data = matches!(
                        f.iter().find_map(|&b| d.push(b)),
                        Some(Ok(Message::Summary(_) | Message::Reading(_)))
                    );
                    if is_data {
                        if data_frames % 4 == 0 {
                            flip_a_bit(&mut f, &mut rng_up);
                            corrupted += 1;
                        }
                        data_frames += 1;
                    }
                    out.extend(f);
                }
                out
            },
            to_device: |bytes: &mut [u8]| {
                chunks += 1;
                if chunks % 3 == 0 && bytes.len() > 1 {
                    flip_a_bit(bytes, &mut rng_down);
                }
            },
        };
        let run = drive(&sim2, &mut master, wire);
        (run, corrupted, master)
    });
    // The master stays open until the agent has read all it was sent.
    let (run, corrupted, _master) = device.await.unwrap();
    assert_eq!(run.pending, 0, "every frame acknowledged in the end");
    assert_eq!(run.stats.dropped_readings, 0);
    assert!(
        run.stats.corrupt_frames > 0,
        "the device saw corrupt acks: {:?}",
        run.stats
    );
    assert!(run.stats.resent > 0, "{:?}", run.stats);
    assert!(corrupted >= 6, "{corrupted} frames corrupted");
    // The device stops once every frame is acknowledged; a resend it wrote
    // before the last ack arrived (corrupted, as every fourth is) may still
    // be on its way through the pty to a busy agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.rejected(Reject::CorruptFrame) < corrupted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.rejected(Reject::CorruptFrame),
        corrupted,
        "each corrupted frame is counted once, and costs nothing else"
    );

    let got = tokio::task::spawn_blocking(move || {
        (
            collector.wait_for(expected, Duration::from_secs(30)),
            collector,
        )
    })
    .await
    .unwrap();
    assert_eq!(got.0, expected, "every reading once, the first frame's too");
    let truth = per_series(&truth(&sim, 5000));
    assert_eq!(per_series(&got.1.totals()), truth, "exact per series");
    agent.shutdown().await.unwrap();
}
