//! Virtual device tests: what a deduplicating, acking gateway receives over
//! a lossy channel agrees, per (channel, window), with the oracle's exact
//! statistics of the device's raw readings.

use std::collections::{BTreeMap, BTreeSet};

use tributary_core::frame::{encode, Ack, FrameDecoder, Message, TimeSync, MAX_FRAME};
use tributary_core::summary::Summary;
use tributary_oracle::{Reading, Stats};
use tributary_sim::judge::judge;
use tributary_sim::{SimConfig, VirtualDevice, SIM_CHANNELS};

#[allow(clippy::unwrap_used)] // test helper: a failure is a test failure
fn run(seed: u64, loss_every: usize) -> (VirtualDevice, BTreeMap<(u8, u64), Summary>, u32) {
    let mut dev = VirtualDevice::new(SimConfig::default(), seed).unwrap();
    let mut rx = FrameDecoder::<MAX_FRAME>::new();
    let mut seen = BTreeSet::new();
    let mut got: BTreeMap<(u8, u64), Summary> = BTreeMap::new();
    let mut hellos = 0;
    let mut n = 0usize;
    for step in 0..700u64 {
        let now = step * 500;
        if step == 600 {
            dev.flush();
        }
        let bytes = dev.step(now);
        let mut reply = Vec::new();
        if step == 30 {
            let mut buf = [0u8; 64];
            let k = encode(
                &Message::TimeSync(TimeSync {
                    unix_ms: 1_700_000_004_321,
                    hello_tick: None,
                }),
                &mut buf,
            )
            .unwrap();
            reply.extend_from_slice(&buf[..k]);
        }
        for b in bytes {
            match rx.push(b) {
                Some(Ok(Message::Summary(f))) => {
                    n += 1;
                    if step < 600 && n % loss_every == 0 {
                        continue; // lost before the gateway applied it
                    }
                    if seen.insert((f.boot, f.seq)) {
                        got.entry((f.channel, f.start_tick))
                            .or_insert_with(|| Summary::new(f.summary.quantum()))
                            .merge(&Summary::from_fixed(&f.summary, f.start_tick as i64))
                            .unwrap();
                    }
                    let mut buf = [0u8; 64];
                    let k = encode(
                        &Message::Ack(Ack {
                            boot: f.boot,
                            seq: f.seq,
                        }),
                        &mut buf,
                    )
                    .unwrap();
                    reply.extend_from_slice(&buf[..k]);
                }
                Some(Ok(Message::Hello(_))) => hellos += 1,
                _ => {}
            }
        }
        dev.receive(&reply);
    }
    (dev, got, hellos)
}

#[test]
fn gateway_receives_exactly_the_ground_truth() {
    let (dev, got, hellos) = run(11, 7);
    assert!(hellos >= 5);
    assert_eq!(dev.pending(), 0);
    assert!(dev.stats().resent > 0);
    assert!(dev.stats().sensor_errors > 0, "dropouts happen");
    // The raw readings per (channel, the window the device put them in),
    // times in device ticks as the gateway's summaries have them.
    let mut raw: BTreeMap<(u8, u64), Vec<Reading>> = BTreeMap::new();
    for r in dev.raw() {
        raw.entry((r.channel, r.window)).or_default().push(Reading {
            time_ms: r.tick as i64,
            ticks: i64::from(r.value),
        });
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        raw.keys().collect::<Vec<_>>()
    );
    let mut buckets = 0;
    for (k, s) in &got {
        let e = SIM_CHANNELS[usize::from(k.0)].quantum().exponent();
        let want = Stats::of(e, &raw[k]).unwrap();
        assert_eq!(judge(s, &want), Vec::<String>::new(), "{k:?}");
        buckets += s.sketch().positive().iter().count() + s.sketch().negative().iter().count();
    }
    assert!(
        buckets > 3 * got.len(),
        "windows hold many sketch buckets ({buckets} in {} windows)",
        got.len()
    );
    // After the TimeSync, window starts fall on wall-clock multiples.
    let offset = 1_700_000_004_321i64 - 15_000;
    let late: Vec<_> = got.keys().filter(|(_, s)| *s > 40_000).collect();
    assert!(!late.is_empty());
    for (_, s) in late {
        assert_eq!((*s as i64 + offset) % 10_000, 0, "start {s}");
    }
}

#[test]
fn same_seed_same_bytes() {
    let mut a = VirtualDevice::new(SimConfig::default(), 5).unwrap();
    let mut b = VirtualDevice::new(SimConfig::default(), 5).unwrap();
    for t in 0..50 {
        assert_eq!(a.step(t * 1_000), b.step(t * 1_000));
    }
    assert!(a.readings() > 0);
}

/// A device made `without_truth` behaves byte for byte like one that keeps
/// its record; it only keeps no record.
#[test]
#[allow(clippy::unwrap_used)]
fn a_device_without_its_record_sends_the_same_bytes() {
    let mut with = VirtualDevice::new(SimConfig::default(), 5).unwrap();
    let mut without = VirtualDevice::new(SimConfig::default(), 5)
        .unwrap()
        .without_truth();
    for step in 0..200u64 {
        assert_eq!(
            with.step(step * 500),
            without.step(step * 500),
            "step {step}"
        );
    }
    assert!(!with.raw().is_empty());
    assert!(without.raw().is_empty());
}
