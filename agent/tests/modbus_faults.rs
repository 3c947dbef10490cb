//! Modbus RTU line faults, counted per device and reason: a device whose
//! responses fail their CRC (the line's far end answers every request with
//! a correctly framed response whose CRC is off by one) counts `crc`, a
//! silent line counts `timeout`; neither stops a good device polled by the
//! same agent (a pymodbus RTU server on a third line).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{ModbusSim, PtyPair};

/// CRC-16/MODBUS, written here for the test (the agent's comes from
/// tokio-modbus).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[test]
fn crc16_matches_the_standard_check_value() {
    // The catalogue's check value of CRC-16/MODBUS over "123456789".
    assert_eq!(crc16(b"123456789"), 0x4B37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_and_silence_are_counted_and_stall_no_other_device() {
    let garbled = PtyPair::start().unwrap();
    let silent = PtyPair::start().unwrap();
    let good = PtyPair::start().unwrap();
    let spec = r#"{"unit":1,"points":[{"metric":"t","address":0,"type":"uint16"}]}"#;
    let sim = ModbusSim::rtu(spec, &good.a).unwrap();
    // The far end of the garbled line: answers each 8-byte read request
    // with one register, CRC off by one.
    let mut far = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&garbled.a)
        .unwrap();
    std::thread::spawn(move || {
        let mut req = [0u8; 8];
        while far.read_exact(&mut req).is_ok() {
            let mut resp = vec![req[0], req[1], 2, 0x12, 0x34];
            let crc = crc16(&resp).wrapping_add(1);
            resp.extend_from_slice(&crc.to_le_bytes());
            if far.write_all(&resp).is_err() {
                return;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let device = |name: &str, path: &std::path::Path| {
        format!(
            "[[modbus]]\nname = \"{name}\"\nserial = {:?}\nparity = \"none\"\n\
             interval_ms = 100\ntimeout_ms = 300\n\
             [[modbus.registers]]\nmetric = \"t\"\naddress = 0\n",
            path.display().to_string()
        )
    };
    let toml = format!(
        "agent_id = \"gw-faults\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n\
         [http]\nlisten = \"\"\n{}{}{}",
        dir.path().display().to_string(),
        device("garbled", &garbled.b),
        device("silent", &silent.b),
        device("good", &good.b),
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let m = agent.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (m.modbus_error("garbled", "crc").get() < 2
        || m.modbus_error("silent", "timeout").get() < 2
        || agent.counters().readings_accepted < 20)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.modbus_error("garbled", "crc").get() >= 2);
    assert_eq!(m.modbus_error("garbled", "timeout").get(), 0);
    assert!(m.modbus_error("silent", "timeout").get() >= 2);
    assert_eq!(m.modbus_error("silent", "crc").get(), 0);
    // The good device went on at its pace: what it served was accepted,
    // but for what is in flight (the value being answered and the poll on
    // its way to the engine); nothing else was.
    let accepted = agent.counters().readings_accepted;
    let served = sim.served().unwrap().len() as u64;
    assert!(accepted >= 20, "the good device stalled: {accepted}");
    assert!(
        accepted <= served && served <= accepted + 2,
        "{accepted} of {served}"
    );
    assert_eq!(m.modbus_error("good", "timeout").get(), 0);
    agent.shutdown().await.unwrap();
}
