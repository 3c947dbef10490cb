//! Modbus devices end to end: an agent polls a `pymodbus` TCP device and a
//! `pymodbus` RTU device on a `socat` pty pair, and forwards through a real
//! mosquitto to the collector's ingest. The judge is the simulators' own
//! log of every value served, with its exact ticks computed in Python:
//! per series, the stored windows in time order hold consecutive runs of
//! the served values, window by window with the exact count and sum, and
//! each run was served inside its window (the poll time is the event
//! time). Devices that cannot be reached, answer with exception responses
//! or never answer are counted per device and reason and stall nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod modbus;

use std::time::Duration;

use modbus::{judge_device, registers, spec, Collector, TIMEOUT_MS, WIDTH};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_testkit::{free_port, ModbusSim, PtyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_and_rtu_readings_reach_the_collector_exactly() {
    let collector = Collector::start();
    let tcp_port = free_port();
    let tcp = ModbusSim::tcp(&spec(1), tcp_port).unwrap();
    let line = PtyPair::start().unwrap();
    let rtu = ModbusSim::rtu(&spec(2), &line.a).unwrap();
    // A device that accepts connections and never answers.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let regs = registers();
    let adir = tempfile::tempdir().unwrap();
    // A Linux pty refuses parity (EINVAL): the RTU line runs 8N1.
    let toml = format!(
        "agent_id = \"gw-modbus\"\ndata_dir = {dir:?}\n\
         [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 0\n\
         [uplink]\nport = {mqtt}\n[http]\nlisten = \"\"\n\
         [[modbus]]\nname = \"plc-tcp\"\ntcp = \"127.0.0.1:{tcp_port}\"\ninterval_ms = 100\n\
         timeout_ms = {TIMEOUT_MS}\n{regs}\
         [[modbus]]\nname = \"plc-rtu\"\nserial = {rtu_path:?}\nbaud = 9600\nparity = \"none\"\n\
         interval_ms = 100\ntimeout_ms = {TIMEOUT_MS}\n{regs}\
         [[modbus]]\nname = \"plc-down\"\ntcp = \"127.0.0.1:{down}\"\ninterval_ms = 100\n\
         [[modbus.registers]]\nmetric = \"x\"\naddress = 0\n\
         [[modbus]]\nname = \"plc-bad\"\ntcp = \"127.0.0.1:{tcp_port}\"\ninterval_ms = 100\n\
         [[modbus.registers]]\nmetric = \"x\"\naddress = 500\n\
         [[modbus]]\nname = \"plc-mute\"\ntcp = \"127.0.0.1:{mute}\"\ninterval_ms = 100\n\
         timeout_ms = 200\n[[modbus.registers]]\nmetric = \"x\"\naddress = 0\n",
        dir = adir.path().display().to_string(),
        mqtt = collector.broker.port(),
        rtu_path = line.b.display().to_string(),
        down = free_port(),
        mute = mute.local_addr().unwrap().port(),
    );
    let agent = Agent::start(AgentConfig::from_toml(&toml).unwrap())
        .await
        .unwrap();

    let want = 20;
    let got = collector
        .wait_for(&["plc-tcp", "plc-rtu"], want, Duration::from_secs(60))
        .await;
    judge_device(&got, "plc-tcp", &tcp.served().unwrap(), want);
    judge_device(&got, "plc-rtu", &rtu.served().unwrap(), want);
    assert!(
        !got.contains_key(&("x".to_string(), "plc-bad".to_string())),
        "an exception response stored nothing"
    );
    let m = agent.metrics();
    assert!(m.modbus_error("plc-down", "connect").get() > 0);
    assert!(m.modbus_error("plc-bad", "exception").get() > 0);
    assert!(m.modbus_error("plc-mute", "timeout").get() > 0);
    for d in ["plc-tcp", "plc-rtu"] {
        for r in [
            "connect",
            "timeout",
            "crc",
            "io",
            "protocol",
            "exception",
            "value",
        ] {
            assert_eq!(m.modbus_error(d, r).get(), 0, "{d}: {r}");
        }
    }
    agent.shutdown().await.unwrap();
    collector.stop().await;
}
