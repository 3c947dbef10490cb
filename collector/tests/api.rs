//! The query API over a real SQLite store, driven with
//! `tower::ServiceExt::oneshot`: series listing with tag filters, exact
//! statistics per window, steps merged on the fly, group-by, revisions,
//! finality, bad queries answered with a JSON 400, and the bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use tributary_collector::finality::Finality;
use tributary_collector::query::{router, ApiState, DEFAULT_MAX_POINTS};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

const MIN: i64 = 60_000;
const T0: i64 = 1_700_000_000_000 / 3_600_000 * 3_600_000;

fn key(device: &str, site: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), site.to_string())]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

fn partial(device: &str, site: &str, minute: i64, values: &[i64]) -> Partial {
    let start = T0 + minute * MIN;
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for (i, v) in values.iter().enumerate() {
        s.insert(start + i as i64, *v).unwrap();
    }
    Partial {
        series: key(device, site),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}

/// d1 (north): minute 0 = [1,2,3], minute 1 = [4]; d2 (north): minute 0 = [10];
/// d3 (south): minute 0 = [100]; a late revision adds [5] to d1 minute 0.
async fn app(dir: &tempfile::TempDir, token: Option<&str>) -> axum::Router {
    app_with(dir, token, DEFAULT_MAX_POINTS).await
}

/// [`app`] allowing `max_points` points per query.
async fn app_with(dir: &tempfile::TempDir, token: Option<&str>, max_points: u64) -> axum::Router {
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let b1 = Batch::new(
        "gw-1",
        1,
        T0 + MIN,
        vec![
            partial("d1", "north", 0, &[1000, 2000, 3000]),
            partial("d1", "north", 1, &[4000]),
            partial("d2", "north", 0, &[10_000]),
        ],
    );
    let b2 = Batch::new(
        "gw-2",
        1,
        T0 + 2 * MIN,
        vec![partial("d3", "south", 0, &[100_000])],
    );
    let late = Batch::new(
        "gw-1",
        2,
        T0 + MIN,
        vec![partial("d1", "north", 0, &[5000])],
    );
    store.apply(&[b1, b2]).await.unwrap();
    store.apply(&[late]).await.unwrap();
    router(ApiState {
        store,
        token: token.map(str::to_string),
        finality: Finality {
            lateness_ms: 0,
            idle_timeout_ms: i64::MAX,
        },
        max_points,
        rollups_ms: vec![3_600_000],
        retention: Default::default(),
    })
}

async fn get(app: &axum::Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn lists_series_filtered_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let (s, v) = get(&app, "/api/v1/series", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["series"].as_array().unwrap().len(), 3);
    let (_, v) = get(&app, "/api/v1/series?tag.site=south", None).await;
    let list = v["series"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["device"], "d3");
}

#[tokio::test]
async fn per_window_statistics_are_exact_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let uri = format!(
        "/api/v1/query?metric=temperature&device=d1&from={T0}&to={}&width={MIN}&stats=count,sum,min,max,mean,first,last",
        T0 + 2 * MIN
    );
    let (s, v) = get(&app, &uri, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let pts = v["results"][0]["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[0]["t"], T0);
    assert_eq!(pts[0]["count"], 4);
    assert_eq!(pts[0]["sum"], 11.0);
    assert_eq!(pts[0]["min"], 1.0);
    assert_eq!(pts[0]["max"], 5.0);
    assert_eq!(pts[0]["mean"], 2.75);
    assert_eq!(pts[0]["first"], 1.0);
    assert_eq!(pts[0]["revision"], 1, "the late batch bumped the revision");
    assert_eq!(pts[1]["count"], 1);
    assert_eq!(pts[1]["revision"], 0);
    // gw-1's watermark is T0+MIN: minute 0 is final, minute 1 is not.
    assert_eq!(pts[0]["final"], true);
    assert_eq!(pts[1]["final"], false);

    // Finality is per series: d3 is reported by gw-2 alone (watermark
    // T0 + 2 min), so its two-minute point is final although gw-1 is behind.
    let uri = format!(
        "/api/v1/query?metric=temperature&device=d3&from={T0}&to={}&width={MIN}&step={}",
        T0 + 2 * MIN,
        2 * MIN
    );
    let (s, v) = get(&app, &uri, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["points"][0]["final"], true, "{v}");
    // Merged with d1 (gw-1, behind), the group's point is not final.
    let uri = format!(
        "/api/v1/query?metric=temperature&from={T0}&to={}&width={MIN}&step={}&group_by=site",
        T0 + 2 * MIN,
        2 * MIN
    );
    let (_, v) = get(&app, &uri, None).await;
    let groups = v["results"].as_array().unwrap();
    let north = groups
        .iter()
        .find(|g| g["group"]["site"] == "north")
        .unwrap();
    let south = groups
        .iter()
        .find(|g| g["group"]["site"] == "south")
        .unwrap();
    assert_eq!(north["points"][0]["final"], false, "{v}");
    assert_eq!(south["points"][0]["final"], true, "{v}");
}

#[tokio::test]
async fn coarser_steps_merge_and_match_the_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let to = T0 + 3_600_000;
    let merged = format!(
        "/api/v1/query?metric=temperature&device=d1&from={T0}&to={to}&width={MIN}&step=3600000&stats=count,sum,stddev,p50"
    );
    let rollup = format!(
        "/api/v1/query?metric=temperature&device=d1&from={T0}&to={to}&width=3600000&stats=count,sum,stddev,p50"
    );
    let (_, a) = get(&app, &merged, None).await;
    let (_, b) = get(&app, &rollup, None).await;
    assert_eq!(a["results"][0]["points"][0]["count"], 5);
    assert_eq!(a["results"][0]["points"][0]["sum"], 15.0);
    assert_eq!(a["results"], b["results"]);
}

#[tokio::test]
async fn group_by_merges_series_per_tag_value() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let uri = format!(
        "/api/v1/query?metric=temperature&from={T0}&to={}&width={MIN}&group_by=site&stats=count,sum",
        T0 + MIN
    );
    let (s, v) = get(&app, &uri, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let res = v["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["group"]["site"], "north");
    assert_eq!(res[0]["points"][0]["count"], 5);
    assert_eq!(res[0]["points"][0]["sum"], 21.0);
    assert_eq!(res[1]["group"]["site"], "south");
    assert_eq!(res[1]["points"][0]["sum"], 100.0);
}

#[tokio::test]
async fn bad_queries_get_a_json_400_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let cases = [
        (
            "/api/v1/query?from=0&to=10&width=60000".to_string(),
            "metric",
        ),
        (
            "/api/v1/query?metric=t&from=x&to=10&width=60000".to_string(),
            "from",
        ),
        (
            "/api/v1/query?metric=t&from=10&to=0&width=60000".to_string(),
            "to",
        ),
        (
            "/api/v1/query?metric=t&from=0&to=10&width=60000&step=90000".to_string(),
            "step",
        ),
        (
            "/api/v1/query?metric=t&from=0&to=10&width=0".to_string(),
            "width",
        ),
        (
            "/api/v1/query?metric=t&from=0&to=10&width=60000&stats=median".to_string(),
            "stats",
        ),
        (
            "/api/v1/query?metric=t&from=0&to=100000000000&width=1&step=1".to_string(),
            "step",
        ),
    ];
    for (uri, what) in cases {
        let (s, v) = get(&app, &uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(what), "{uri}: {msg}");
    }
}

/// One query's work is bounded: selected series × steps may not exceed
/// `max_points`; over it, a 400 names the parameters and the limit.
#[tokio::test]
async fn a_query_over_max_points_gets_a_400_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Three series (d1, d2, d3); 9 points allowed.
    let app = app_with(&dir, None, 9).await;
    let uri = |steps: i64| {
        format!(
            "/api/v1/query?metric=temperature&from={T0}&to={}&width={MIN}",
            T0 + steps * MIN
        )
    };
    let (s, v) = get(&app, &uri(3), None).await;
    assert_eq!(s, StatusCode::OK, "3 series × 3 steps = 9: {v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    let (s, v) = get(&app, &uri(4), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "3 × 4 = 12 > 9: {v}");
    let msg = v["error"].as_str().unwrap();
    for what in [
        "3 series",
        "4 steps",
        "max_points = 9",
        "`step`",
        "`from`",
        "`to`",
    ] {
        assert!(msg.contains(what), "{what}: {msg}");
    }
    // A narrower selector fits: d1 alone over 9 steps.
    let (s, v) = get(&app, &format!("{}&device=d1", uri(9)), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // So does a larger step over the same range.
    let (s, v) = get(&app, &format!("{}&step={}", uri(4), 2 * MIN), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn the_bearer_token_guards_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, Some("s3cret")).await;
    let (s, v) = get(&app, "/api/v1/series", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("bearer"));
    let (s, _) = get(&app, "/api/v1/series", Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = get(&app, "/api/v1/series", Some("s3cret")).await;
    assert_eq!(s, StatusCode::OK);
}

/// `GET uri` with the raw `Authorization` header `auth`: the status.
async fn status_with(app: &axum::Router, uri: &str, auth: &str) -> StatusCode {
    let req = Request::get(uri)
        .header("authorization", auth)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

/// Authorization schemes are case-insensitive (RFC 9110 §11.1): `bearer`
/// was refused. The token itself is compared exactly.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, Some("s3cret")).await;
    for auth in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        assert_eq!(
            status_with(&app, "/api/v1/series", auth).await,
            StatusCode::OK,
            "{auth}"
        );
    }
    for auth in [
        "Basic s3cret",
        "Bearer S3CRET",
        "Bearer",
        "Bearers3cret",
        "s3cret",
        "Bearer s3cret x",
    ] {
        assert_eq!(
            status_with(&app, "/api/v1/series", auth).await,
            StatusCode::UNAUTHORIZED,
            "{auth}"
        );
    }
}

/// The points of the first result of `uri`: (t, count).
async fn points(app: &axum::Router, uri: &str) -> Vec<(i64, u64)> {
    let (s, v) = get(app, uri, None).await;
    assert_eq!(s, StatusCode::OK, "{uri}: {v}");
    v["results"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t"].as_i64().unwrap(), p["count"].as_u64().unwrap()))
        .collect()
}

/// Windows are answered at their own starts whatever the range: the ends
/// of i64 answered points shifted off their alignment (and overflowed), and
/// so did a `from` between two window starts.
#[tokio::test]
async fn any_range_answers_windows_exactly_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(&dir, None, u64::MAX).await;
    let d1 = |from: i64, to: i64, extra: &str| {
        format!("/api/v1/query?metric=temperature&device=d1&from={from}&to={to}&width={MIN}&stats=count{extra}")
    };
    let want = [(T0, 4), (T0 + MIN, 1)];
    assert_eq!(points(&app, &d1(i64::MIN, i64::MAX, "")).await, want);
    assert_eq!(
        points(&app, &d1(i64::MIN + 1, T0 + 2 * MIN, "")).await,
        want
    );
    assert_eq!(points(&app, &d1(T0 - 30_000, i64::MAX, "")).await, want);
    assert_eq!(points(&app, &d1(T0 - 1, T0 + 2 * MIN, "")).await, want);
    // A window starting before `from` is not part of the answer.
    assert_eq!(
        points(&app, &d1(T0 + 1, T0 + 2 * MIN, "")).await,
        [(T0 + MIN, 1)]
    );
    // Steps start at `from` rounded up to the width, and merge windows.
    let two = format!("&step={}", 2 * MIN);
    assert_eq!(
        points(&app, &d1(T0 - 30_000, T0 + 2 * MIN, &two)).await,
        [(T0, 5)]
    );
    assert_eq!(
        points(
            &app,
            &d1(
                i64::MIN,
                i64::MAX,
                &format!("&step={}", 3_600_000_000_000i64)
            )
        )
        .await
        .len(),
        1
    );
    // The roll-up answers at its own alignment too.
    let hour = format!(
        "/api/v1/query?metric=temperature&device=d1&from={}&to={}&width=3600000&stats=count",
        i64::MIN,
        i64::MAX
    );
    assert_eq!(points(&app, &hour).await, [(T0, 5)]);
}

/// A width that holds no results (not a roll-up either) answered 200 with
/// nothing; now a 400 naming `width` and the widths that are stored. A
/// range in which no window of the width starts gets a 400 naming it.
#[tokio::test]
async fn widths_and_ranges_the_store_cannot_answer_get_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None).await;
    let uri = format!(
        "/api/v1/query?metric=temperature&from={T0}&to={}&width=120000",
        T0 + 3_600_000
    );
    let (s, v) = get(&app, &uri, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"].as_str().unwrap();
    for what in ["`width`", "120000", "60000", "3600000"] {
        assert!(msg.contains(what), "{what}: {msg}");
    }
    let uri = format!(
        "/api/v1/query?metric=temperature&from={}&to={}&width={MIN}",
        T0 + 1,
        T0 + 2
    );
    let (s, v) = get(&app, &uri, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("`from`") && msg.contains("`to`"), "{msg}");
    // A roll-up width answers even where it holds nothing yet.
    let uri = "/api/v1/query?metric=temperature&from=0&to=3600000&width=3600000";
    let (s, v) = get(&app, uri, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
