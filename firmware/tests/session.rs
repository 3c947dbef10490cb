//! Session tests: the device adopts only a TimeSync that answers its Hello
//! within the round-trip bound, at the round trip's midpoint; held-up
//! TimeSyncs — however many, however well they agree — are refused; the
//! first sample falls on a wall-clock window boundary.
#![allow(clippy::unwrap_used)] // a test's failure is a panic

use tributary_core::frame::{encode, FrameDecoder, Message, TimeSync, MAX_FRAME};
use tributary_firmware::{
    index, Aggregator, ChannelSpec, Link, Mode, Session, SessionConfig, SyncEvent,
};

const SPECS: [ChannelSpec; 1] = [ChannelSpec {
    metric: "temperature",
    unit: "degC",
    index: &index(-3),
    reference: 20_000,
}];

const CFG: SessionConfig = SessionConfig::new("dev-1", "t", 1_000, 20).hello_every(500);

struct Dev {
    session: Session,
    agg: Aggregator<1>,
    link: Link<4, 128>,
    /// Hellos on the wire: (their tick).
    hellos: Vec<u64>,
}

fn dev() -> Dev {
    Dev {
        session: Session::new(CFG, 7),
        agg: Aggregator::new(&SPECS, 7, CFG.window_ms, Mode::Aggregate).unwrap(),
        link: Link::new(1_000),
        hellos: Vec::new(),
    }
}

impl Dev {
    /// Runs the Hello step at `now`, decoding what went on the wire.
    fn hello(&mut self, now: u64) -> bool {
        let mut wire = Vec::new();
        let sent = self
            .session
            .hello(now, &SPECS, &self.agg, &mut self.link, &mut |b: &[u8]| {
                wire.extend_from_slice(b)
            });
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        for b in wire {
            if let Some(Ok(Message::Hello(h))) = dec.push(b) {
                assert_eq!((h.boot, h.window_ms), (7, 1_000));
                self.hellos.push(h.tick);
            }
        }
        sent
    }

    fn receive(&mut self, now: u64, syncs: &[(i64, Option<u64>)]) -> Option<SyncEvent> {
        let mut bytes = Vec::new();
        for &(unix_ms, hello_tick) in syncs {
            let mut buf = [0u8; MAX_FRAME];
            let m = Message::TimeSync(TimeSync {
                unix_ms,
                hello_tick,
            });
            let n = encode(&m, &mut buf).unwrap();
            bytes.extend_from_slice(&buf[..n]);
        }
        self.session
            .receive(now, &bytes, &mut self.link, &mut self.agg)
    }
}

/// Wall clock of the gateway: device tick + this.
const TRUE_OFFSET: i64 = 1_796_158_897_889;

#[test]
fn held_up_time_syncs_that_agree_are_refused_and_a_prompt_answer_is_adopted_at_the_midpoint() {
    let mut d = dev();
    assert!(d.hello(0));
    assert!(!d.hello(499), "Hello every 500 ms");
    assert!(d.hello(500));
    // The gateway answered both Hellos at once (stamps 10 ms apart, as when
    // the periodic sync and the first answer coincide), but both sat ~1 s in
    // a buffer: the old two-agreeing-TimeSyncs rule adopted them, 987 ms
    // off. Their round trips give them away.
    let stamp = TRUE_OFFSET + 510;
    let ev = d.receive(1_497, &[(stamp, Some(0)), (stamp + 10, Some(500))]);
    assert_eq!(ev, Some(SyncEvent::Refused { rtt_ms: 997 }));
    assert_eq!(d.session.refused(), 2);
    assert!(!d.session.synced());
    assert!(!d.session.sample_due(2_000), "no sampling before the sync");
    // Unprompted TimeSyncs carry no round trip: ignored.
    assert_eq!(d.receive(1_497, &[(TRUE_OFFSET + 1_497, None)]), None);
    // A refusal asks again at once.
    assert!(d.hello(1_497));
    assert_eq!(d.hellos, [0, 500, 1_497]);
    // Answered 4 ms after the Hello left, received 8 ms after: adopted at
    // the midpoint, exactly the true offset.
    let ev = d.receive(1_505, &[(TRUE_OFFSET + 1_501, Some(1_497))]);
    assert_eq!(
        ev,
        Some(SyncEvent::Adopted {
            offset_ms: TRUE_OFFSET,
            rtt_ms: 8
        })
    );
    assert_eq!(d.session.clock().offset(), Some(TRUE_OFFSET));
    assert!(!d.hello(5_000), "no Hello once synchronised");
    // Later TimeSyncs do not move the adopted offset.
    assert_eq!(
        d.receive(1_600, &[(TRUE_OFFSET + 5_000, Some(1_590))]),
        None
    );
    assert_eq!(d.session.clock().offset(), Some(TRUE_OFFSET));
    // The first sample is at the next wall-clock window boundary, then
    // every period.
    let boundary = (1_000 - (1_505 + TRUE_OFFSET).rem_euclid(1_000)) as u64 + 1_505;
    assert_eq!((boundary as i64 + TRUE_OFFSET).rem_euclid(1_000), 0);
    assert!(!d.session.sample_due(boundary - 1));
    assert!(d.session.sample_due(boundary));
    assert!(!d.session.sample_due(boundary + 19));
    assert!(d.session.sample_due(boundary + 20));
}

#[test]
fn a_slow_link_never_syncs_and_an_answer_from_the_future_is_refused() {
    let mut d = dev();
    assert!(d.hello(0));
    // A Hello tick the device has not reached: refused, not wrapped.
    assert_eq!(
        d.receive(50, &[(TRUE_OFFSET, Some(60))]),
        Some(SyncEvent::Refused { rtt_ms: u64::MAX })
    );
    // Every answer 101 ms after its Hello: never adopted.
    for k in 0..10u64 {
        let sent = 100 + 200 * k;
        assert!(d.hello(sent), "Hello at {sent}");
        let ev = d.receive(sent + 101, &[(TRUE_OFFSET + sent as i64 + 50, Some(sent))]);
        assert_eq!(ev, Some(SyncEvent::Refused { rtt_ms: 101 }));
    }
    assert!(!d.session.synced());
    // At the bound exactly: adopted, off by at most half the round trip
    // (the gateway stamped 30 ms after the Hello left: 20 ms late here).
    assert!(d.hello(5_000));
    let ev = d.receive(5_100, &[(TRUE_OFFSET + 5_030, Some(5_000))]);
    assert_eq!(
        ev,
        Some(SyncEvent::Adopted {
            offset_ms: TRUE_OFFSET - 20,
            rtt_ms: 100
        })
    );
}
