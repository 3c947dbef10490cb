//! Serial devices over a pty pair: the test is the device (frames from a
//! simulated device plan, written into the pty master with corrupt bytes in
//! between), the agent reads the slave side. Every frame is acknowledged only
//! after commit, a corrupt frame is counted and costs nothing else, and the
//! partials upstream add up exactly to the device's readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use tributary_agent::config::Config;
use tributary_agent::metrics::Reject;
use tributary_agent::sources::simulated::SimPlan;
use tributary_agent::Agent;
use tributary_core::frame::{self, FrameDecoder, Message, MAX_FRAME};
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

    // The device: a plan of 2 channels × 6 windows, no simulated devices in the agent.
    let sim = sim_config(1, 6, 0, 0);
    let plan = SimPlan::all(&sim).remove(0);
    let frames = plan.frames().unwrap() as u32;
    let expected = plan.readings().len() as u64;

    let no_sim = sim_config(0, 0, 0, 0);
    let extra = format!(
        "[[serial]]\npath = {:?}\nbaud = 115200\n",
        slave_path.display().to_string()
    );
    let cfg = Config::from_toml(&agent_toml(dir.path(), broker.port(), &no_sim, &extra)).unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let metrics = agent.metrics();

    let mut master = std::fs::File::from(pty.master);
    let device = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; MAX_FRAME];
        let mut write = |m: &Message, master: &mut std::fs::File| {
            let n = frame::encode(m, &mut buf).unwrap();
            master.write_all(&buf[..n]).unwrap();
        };
        write(&Message::Hello(plan.hello()), &mut master);
        for seq in 0..frames {
            write(&plan.frame(seq), &mut master);
            if seq == 3 {
                // A corrupt frame: garbage up to a delimiter.
                master.write_all(&[0x05, 0xFF, 0x13, 0x37, 0x00]).unwrap();
            }
        }
        // Read replies until every frame is acked.
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut acked = std::collections::HashSet::new();
        let mut time_syncs = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rbuf = [0u8; 1024];
        while acked.len() < frames as usize && Instant::now() < deadline {
            let n = master.read(&mut rbuf).unwrap();
            for &b in &rbuf[..n] {
                match dec.push(b) {
                    Some(Ok(Message::Ack(a))) => {
                        assert_eq!(a.boot, plan.boot);
                        acked.insert(a.seq);
                    }
                    Some(Ok(Message::TimeSync(_))) => time_syncs += 1,
                    _ => {}
                }
            }
        }
        (acked.len() as u32, time_syncs, master)
    });
    let (acked, time_syncs, _master) = device.await.unwrap();
    assert_eq!(acked, frames, "every frame acknowledged");
    assert!(time_syncs >= 1, "the agent answers Hello with TimeSync");
    assert_eq!(metrics.rejected(Reject::CorruptFrame), 1);

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
