//! The dashboard in a real headless browser: a collector HTTP server (query
//! API + dashboard over a SQLite store filled with known batches) on
//! 127.0.0.1, loaded by Debian's `chromium`. The dumped DOM must hold one
//! chart per series (or group) whose points carry exactly the stored means,
//! final and provisional points as the watermark says; API errors and a
//! missing token must be shown to the user; a screenshot is saved and checked
//! to be a real PNG. The collector started by `service::start` serves the
//! page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use tributary_collector::config::Config;
use tributary_collector::finality::Finality;
use tributary_collector::query::api::{self, ApiState};
use tributary_collector::query::dashboard::{self, DashboardOptions};
use tributary_collector::query::DEFAULT_MAX_POINTS;
use tributary_collector::service;
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_oracle::{Reading, Stats};
use tributary_testkit::{Mosquitto, MosquittoOptions};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// A whole hour, long past (the page is driven to it with from/to).
const T0: i64 = 1_700_000_000_000 / HOUR * HOUR;
/// The agents' watermark: windows ending at or before it are final.
const WATERMARK_MIN: i64 = 48;
const DEVICES: [(&str, &str); 3] = [("d1", "north"), ("d2", "north"), ("d3", "south")];
const READINGS_PER_MINUTE: i64 = 6;

fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        path.exists(),
        "headless browser not found at {} (install Debian's `chromium`: scripts/test.sh does, \
         or set CHROMIUM=/path/to/chromium)",
        path.display()
    );
    path
}

fn key(device: &str, site: &str) -> SeriesKey {
    let tags = BTreeMap::from([
        ("site".to_string(), site.to_string()),
        ("unit".to_string(), "°C".to_string()),
    ]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

/// The readings (in quanta of 0.01) of device `d` in minute `m`: a slow wave
/// per device plus a spread inside the minute.
fn readings(d: usize, m: i64) -> Vec<i64> {
    let base = 2000 + 300 * d as i64 + ((m as f64 / 7.0).sin() * 250.0) as i64;
    (0..READINGS_PER_MINUTE)
        .map(|i| base + (i * 37 + m * 11 + d as i64 * 5) % 160 - 80)
        .collect()
}

/// The oracle's statistics of `values` as [`summary`] sends them from
/// `start`: the judge of what the dashboard draws, from the raw readings.
fn stats(values: &[i64], start: i64) -> Stats {
    let rs: Vec<Reading> = values
        .iter()
        .enumerate()
        .map(|(i, &ticks)| Reading {
            time_ms: start + i as i64 * 1000,
            ticks,
        })
        .collect();
    Stats::of(-2, &rs).unwrap()
}

fn summary(values: &[i64], start: i64) -> Summary {
    let mut s = Summary::new(Quantum::new(-2).unwrap());
    for (i, v) in values.iter().enumerate() {
        s.insert(start + i as i64 * 1000, *v).unwrap();
    }
    s
}

/// Runs `f` to completion on a runtime of its own (these tests are
/// synchronous: the browser is a blocking child process).
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One hour of minutes from `t0` for every device, from two agents; the
/// watermark makes the first `WATERMARK_MIN` minutes final.
fn store(dir: &Path, t0: i64) -> SqliteStore {
    let store = SqliteStore::open(&dir.join("c.db"), &[HOUR]).unwrap();
    for (agent, devices) in [("gw-1", &DEVICES[..2]), ("gw-2", &DEVICES[2..])] {
        let mut partials = Vec::new();
        for (name, site) in devices {
            let d = DEVICES.iter().position(|(n, _)| n == name).unwrap();
            for m in 0..60 {
                let start = t0 + m * MIN;
                partials.push(Partial {
                    series: key(name, site),
                    window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                    summary: summary(&readings(d, m), start),
                });
            }
        }
        let batch = Batch::new(agent, 1, t0 + WATERMARK_MIN * MIN, partials);
        block(store.apply(&[batch])).unwrap();
    }
    store
}

/// A collector HTTP server (query API + dashboard) on a free port; stops
/// when dropped.
struct Server {
    addr: SocketAddr,
    /// `/api/v1/query` requests served so far.
    queries: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server whose data starts at `T0`.
    fn start(token: Option<&str>) -> Server {
        Server::with_data_from(token, T0)
    }

    fn with_data_from(token: Option<&str>, t0: i64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), t0);
        Server::over(store, dir, token)
    }

    fn over(store: SqliteStore, dir: tempfile::TempDir, token: Option<&str>) -> Server {
        let state = ApiState {
            store,
            token: token.map(str::to_string),
            finality: Finality {
                lateness_ms: 0,
                idle_timeout_ms: i64::MAX,
            },
            max_points: DEFAULT_MAX_POINTS,
            rollups_ms: vec![HOUR],
            retention: Default::default(),
        };
        let queries = Arc::new(AtomicUsize::new(0));
        let counter = queries.clone();
        let app = api::router(state.clone())
            .merge(dashboard::router(
                state,
                DashboardOptions {
                    widths_ms: vec![HOUR],
                },
            ))
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                if req.uri().path() == "/api/v1/query" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                next.run(req)
            }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Server {
            addr,
            queries,
            _rt: rt,
            _dir: dir,
        }
    }

    fn url(&self, query: &str) -> String {
        format!("http://{}/?{query}", self.addr)
    }
}

/// Loads `url` in headless chromium; returns the DOM after 4 s of virtual
/// time (enough for the first load; no poll fires).
fn browse(url: &str) -> String {
    browse_for(url, 4000, None)
}

/// Loads `url` in headless chromium, lets the page run `virtual_ms` of
/// virtual time (timers fire, fetches complete) and returns the DOM, saving a
/// screenshot to `shot` in the same run if given. Bounded: killed after 60 s.
fn browse_for(url: &str, virtual_ms: u32, shot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1366,800",
        ])
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .args(shot.map(|p| format!("--screenshot={}", p.display())))
        .arg(url)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium failed ({status}) on {url}");
    std::fs::read_to_string(out.path()).unwrap()
}

/// [`browse`], also saving a 1366×800 screenshot as `name` in the test's
/// target directory, checked to be a PNG of that size holding at least
/// `min_bytes` (a blank page compresses far smaller).
fn browse_and_shoot(url: &str, name: &str, min_bytes: usize) -> String {
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&png);
    let dom = browse_for(url, 4000, Some(&png));
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1366, 800));
    assert!(
        bytes.len() > min_bytes,
        "{name}: only {} bytes",
        bytes.len()
    );
    dom
}

/// The attributes of every `<circle class="pt …">` in the DOM.
fn points(dom: &str) -> Vec<BTreeMap<String, String>> {
    dom.split("<circle ")
        .skip(1)
        .map(|el| {
            let el = &el[..el.find('>').unwrap()];
            let mut attrs = BTreeMap::new();
            let mut rest = el;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].trim().to_string();
                let after = &rest[eq + 2..];
                let end = after.find('"').unwrap();
                attrs.insert(name, after[..end].to_string());
                rest = &after[end + 1..];
            }
            attrs
        })
        .filter(|a| a.get("class").is_some_and(|c| c.starts_with("pt ")))
        .collect()
}

/// The `data-state` of the page's body.
fn state(dom: &str) -> &str {
    let i = dom.find("data-state=\"").expect("body has data-state") + 12;
    &dom[i..i + dom[i..].find('"').unwrap()]
}

fn range(from: i64, to: i64) -> String {
    format!("metric=temperature&from={from}&to={to}&width={MIN}&step={MIN}&q=p90")
}

#[test]
fn charts_show_the_stored_means_with_finality_and_a_screenshot() {
    let server = Server::start(None);
    let url = server.url(&range(T0, T0 + HOUR));
    let dom = browse_and_shoot(&url, "dashboard.png", 30_000);
    assert_eq!(state(&dom), "ok", "{dom}");
    assert_eq!(
        dom.matches("class=\"card\"").count(),
        3,
        "one chart per series"
    );
    let pts = points(&dom);
    assert_eq!(
        pts.len(),
        3 * 60,
        "every stored minute of every series is drawn"
    );

    // Each point's values are exactly those of its minute's readings.
    for (d, (name, _)) in DEVICES.iter().enumerate() {
        let card = dom.find(&format!("data-label=\"{name}\"")).unwrap();
        let next = dom[card + 1..]
            .find("class=\"card\"")
            .map_or(dom.len(), |i| card + 1 + i);
        let mine = points(&dom[card..next]);
        assert_eq!(mine.len(), 60, "{name}");
        for p in &mine {
            let t: i64 = p["data-t"].parse().unwrap();
            let m = (t - T0) / MIN;
            let s = stats(&readings(d, m), t);
            let (min, max) = (s.value(s.min_ticks()), s.value(s.max_ticks()));
            let mean: f64 = p["data-mean"].parse().unwrap();
            assert_eq!(mean, s.mean(), "{name} minute {m}");
            assert_eq!(p["data-min"].parse::<f64>().unwrap(), min);
            assert_eq!(p["data-max"].parse::<f64>().unwrap(), max);
            assert_eq!(p["data-count"], READINGS_PER_MINUTE.to_string());
            let q: f64 = p["data-q"].parse().unwrap();
            assert!(min <= q && q <= max, "p90 {q}");
            // Minute m ends at m + 1: final when that is within the watermark.
            let is_final = m < WATERMARK_MIN;
            assert_eq!(p["data-final"], is_final.to_string(), "{name} minute {m}");
            assert!(p["class"].ends_with(if is_final { "final" } else { "provisional" }));
        }
    }
}

#[test]
fn group_by_draws_one_chart_per_tag_value_with_merged_means() {
    let server = Server::start(None);
    let dom = browse_and_shoot(
        &server.url(&format!("{}&group_by=site", range(T0, T0 + HOUR))),
        "dashboard-group.png",
        20_000,
    );
    assert_eq!(state(&dom), "ok", "{dom}");
    assert_eq!(dom.matches("class=\"card\"").count(), 2, "north and south");
    let north = dom.find("data-label=\"site = north\"").unwrap();
    let south = dom.find("data-label=\"site = south\"").unwrap();
    assert!(north < south);
    let pts = points(&dom[north..south]);
    assert_eq!(pts.len(), 60);
    for p in pts {
        let t: i64 = p["data-t"].parse().unwrap();
        let m = (t - T0) / MIN;
        let both = [readings(0, m), readings(1, m)].concat();
        let s = stats(&both, t);
        assert_eq!(p["data-mean"].parse::<f64>().unwrap(), s.mean());
        assert_eq!(p["data-count"], (2 * READINGS_PER_MINUTE).to_string());
    }
}

#[test]
fn an_api_error_and_an_empty_range_are_shown_to_the_user() {
    let server = Server::start(None);
    // 90 s is not a multiple of the 60 s width: the API answers 400.
    let bad = format!(
        "metric=temperature&from={T0}&to={}&width={MIN}&step=90000",
        T0 + HOUR
    );
    let dom = browse_and_shoot(&server.url(&bad), "dashboard-error.png", 5_000);
    assert_eq!(state(&dom), "error", "{dom}");
    let err = &dom[dom.find("id=\"error\"").unwrap()..];
    let err = &err[..err.find("</div>").unwrap()];
    assert!(!err.contains("hidden"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(err.contains("must be a positive multiple of"), "{err}");
    assert!(points(&dom).is_empty());

    // A range with no data: an explanation instead of an empty chart.
    let dom = browse_and_shoot(
        &server.url(&range(T0 - 2 * HOUR, T0 - HOUR)),
        "dashboard-empty.png",
        5_000,
    );
    assert_eq!(state(&dom), "empty", "{dom}");
    assert!(dom.contains("No data for <b>temperature</b>"), "{dom}");
    assert!(points(&dom).is_empty());
}

#[test]
fn a_collector_with_a_token_asks_for_it_and_shows_no_data() {
    let server = Server::start(Some("s3cret"));
    let dom = browse_and_shoot(
        &server.url(&range(T0, T0 + HOUR)),
        "dashboard-token.png",
        5_000,
    );
    assert_eq!(state(&dom), "auth", "{dom}");
    let panel = &dom[dom.find("id=\"token-panel\"").unwrap()..];
    let panel_tag = &panel[..panel.find('>').unwrap()];
    assert!(
        !panel_tag.contains("hidden"),
        "token entry shown: {panel_tag}"
    );
    assert!(dom.contains("bearer token"), "{dom}");
    assert!(points(&dom).is_empty());
}

#[test]
fn with_the_right_token_the_charts_show_and_a_wrong_one_is_refused() {
    let server = Server::start(Some("s3cret"));
    let url = server.url(&range(T0, T0 + HOUR));
    let dom = browse(&format!("{url}#token=s3cret"));
    assert_eq!(state(&dom), "ok", "{dom}");
    assert_eq!(points(&dom).len(), 3 * 60);
    let dom = browse(&format!("{url}#token=wrong"));
    assert_eq!(state(&dom), "auth", "{dom}");
    assert!(dom.contains("HTTP 401"), "{dom}");
    assert!(dom.contains("missing or wrong bearer token"), "{dom}");
    assert!(points(&dom).is_empty());
}

#[test]
fn meta_lists_configured_and_stored_widths() {
    let server = Server::start(Some("s3cret"));
    let body = http_get(server.addr, "/api/v1/meta");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(&body[body.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    // 60 s holds the agents' windows, 1 h is the configured roll-up.
    assert_eq!(json["widths_ms"], serde_json::json!([MIN, HOUR]));
    assert_eq!(json["token_required"], true);
}

#[test]
fn a_relative_range_picks_width_and_step_and_shows_recent_data() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Data from 30 minutes ago (and on into the future, which a range
    // ending now must not show).
    let t0 = now / MIN * MIN - 30 * MIN;
    let server = Server::with_data_from(None, t0);
    // No width or step: the page takes the finest stored width (60 s, from
    // /api/v1/meta) and a step giving at most 120 points (60 s for 1 h).
    let dom = browse(&server.url("metric=temperature&range=1h"));
    assert_eq!(state(&dom), "ok", "{dom}");
    assert!(dom.contains("width 1 min · step 1 min"), "{dom}");
    let card = dom.find("data-label=\"d1\"").unwrap();
    let next = dom[card..].find("data-label=\"d2\"").unwrap();
    let pts = points(&dom[card..card + next]);
    // Minutes t0 .. the current one (31; 32 if a minute began meanwhile).
    assert!((31..=32).contains(&pts.len()), "{} points", pts.len());
    for (m, p) in pts.iter().enumerate() {
        let t: i64 = p["data-t"].parse().unwrap();
        assert_eq!(t, t0 + m as i64 * MIN);
        let s = stats(&readings(0, m as i64), t);
        assert_eq!(p["data-mean"].parse::<f64>().unwrap(), s.mean());
    }
}

#[test]
fn a_bare_first_visit_with_many_series_groups_them_by_a_tag() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now / MIN * MIN - 10 * MIN;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[HOUR]).unwrap();
    // 12 devices over 3 sites (4 each).
    let partials = (0..12)
        .flat_map(|d| {
            let site = ["a", "b", "c"][d % 3];
            (0..5).map(move |m| {
                let start = t0 + m * MIN;
                Partial {
                    series: key(&format!("dev{d}"), site),
                    window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                    summary: summary(&readings(d, m), start),
                }
            })
        })
        .collect();
    block(store.apply(&[Batch::new("gw", 1, t0 + 5 * MIN, partials)])).unwrap();
    let server = Server::over(store, dir, None);
    let dom = browse(&format!("http://{}/", server.addr));
    assert_eq!(state(&dom), "ok", "{dom}");
    assert_eq!(dom.matches("class=\"card\"").count(), 3, "{dom}");
    for site in ["a", "b", "c"] {
        assert!(dom.contains(&format!("data-label=\"site = {site}\"")));
    }
    let pts = points(&dom);
    assert_eq!(pts.len(), 3 * 5);
    assert!(pts.iter().all(|p| p["data-count"] == "24"), "4 devices × 6");
    // Asked for explicitly, one chart per series (at most 24) it is.
    let dom = browse(&format!(
        "http://{}/?metric=temperature&range=1h",
        server.addr
    ));
    assert_eq!(dom.matches("class=\"card\"").count(), 12);
}

#[test]
fn live_mode_polls_the_api() {
    let live = Server::start(None);
    // 16 s of virtual time: the first load plus polls at 5, 10 and 15 s.
    let dom = browse_for(&live.url(&range(T0, T0 + HOUR)), 16_000, None);
    assert_eq!(state(&dom), "ok");
    assert!(dom.contains("live · updated"), "{dom}");
    let n = live.queries.load(Ordering::SeqCst);
    assert!(n >= 3, "only {n} queries in 16 s of live mode");
}

#[test]
fn paused_mode_queries_once() {
    let paused = Server::start(None);
    let url = format!("{}&live=0", range(T0, T0 + HOUR));
    let dom = browse_for(&paused.url(&url), 16_000, None);
    assert_eq!(state(&dom), "ok");
    assert!(dom.contains("paused · updated"), "{dom}");
    assert_eq!(paused.queries.load(Ordering::SeqCst), 1);
    assert_eq!(points(&dom).len(), 3 * 60);
}

/// `GET path` on `addr`; the whole HTTP/1.1 response as text.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_running_collector_serves_the_dashboard() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml(&format!(
        "[mqtt]\nport = {}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        broker.port()
    ))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &cfg.rollups_ms).unwrap();
    let running = rt.block_on(service::start(&cfg, store)).unwrap();
    let addr = running.http_addr();
    for path in ["/", "/dashboard"] {
        let page = http_get(addr, path);
        assert!(page.starts_with("HTTP/1.1 200"), "{path}: {page}");
        assert!(page.contains("<title>Tributary"), "{path}: {page}");
        assert!(page.contains("default-src 'self'"), "CSP: {page}");
    }
    let js = http_get(addr, "/dashboard/app.js");
    assert!(js.contains("text/javascript"), "{js}");
    assert!(js.contains("/api/v1/query"), "{js}");
    assert!(http_get(addr, "/dashboard/style.css").contains("text/css"));
    // An empty store: only the configured roll-ups (1 h, 1 d).
    let meta = http_get(addr, "/api/v1/meta");
    assert!(
        meta.contains(r#"{"token_required":false,"widths_ms":[3600000,86400000]}"#),
        "{meta}"
    );
    // The page on an empty collector says so.
    let dom = browse(&format!("http://{addr}/"));
    assert_eq!(state(&dom), "empty", "{dom}");
    assert!(dom.contains("No series are stored yet"), "{dom}");
    rt.block_on(running.stop()).unwrap();
}
