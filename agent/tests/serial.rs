//! Serial devices over a pty pair: the test drives the firmware's own
//! virtual device (real aggregator and link code) on the pty master, with
//! corrupt bytes in between; the agent reads the slave side. The device's
//! frames are acknowledged only after commit (its resend ring empties), the
//! agent's TimeSync reaches it, a corrupt frame is counted and costs nothing
//! else, and the partials upstream add up exactly to the device's readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use tributary_agent::config::Config;
use tributary_agent::metrics::Reject;
use tributary_agent::Agent;
use tributary_core::frame::{FrameDecoder, Message, MAX_FRAME};
use tributary_sim::SimDevice;
use tributary_testkit::{Mosquitto, MosquittoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_device_frames_are_acked_after_commit_and_add_up() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();

    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).unwrap();
    // Raw mode on the master side too, so no byte is translated.
    let mut t = nix::sys::termios::tcgetattr(&pty.master).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.master, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();

    // The device: the firmware's virtual device, 6 windows of 5 samples.
    let sim = sim_config(1, 6, 0, 0);
    let spec = SimDevice::all(&sim).remove(0);
    let expected: u64 = truth(&sim, 5000).values().map(|v| v.0).sum();

    let no_sim = sim_config(0, 0, 0, 0);
    let extra = format!(
        "[[serial]]\npath = {:?}\nbaud = 115200\n",
        slave_path.display().to_string()
    );
    let cfg = Config::from_toml(&agent_toml(dir.path(), broker.port(), &no_sim, &extra)).unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let metrics = agent.metrics();

    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let device = tokio::task::spawn_blocking(move || {
        let mut dev = spec.device().unwrap();
        let last = spec.last_tick().unwrap();
        let (mut t, mut stopped, mut corrupted) = (0u64, false, false);
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
                t += spec.period_ms();
                master.write_all(&bytes).unwrap();
                if !corrupted && t > 2000 {
                    // A corrupt frame: garbage up to a delimiter.
                    master.write_all(&[0x05, 0xFF, 0x13, 0x37, 0x00]).unwrap();
                    corrupted = true;
                }
            }
            match master.read(&mut rbuf) {
                Ok(n) => {
                    for &b in &rbuf[..n] {
                        match dec.push(b) {
                            Some(Ok(Message::Ack(_))) => acks += 1,
                            Some(Ok(Message::TimeSync(_))) => time_syncs += 1,
                            _ => {}
                        }
                    }
                    dev.receive(&rbuf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("{e}"),
            }
        }
        (dev.pending(), dev.stats(), acks, time_syncs, master)
    });
    let (pending, stats, acks, time_syncs, _master) = device.await.unwrap();
    assert_eq!(pending, 0, "every frame acknowledged");
    assert_eq!(stats.dropped_readings, 0);
    assert!(acks >= 3 * 6, "at least one ack per summary frame: {acks}");
    assert!(time_syncs >= 1, "the agent answers Hello with TimeSync");
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
