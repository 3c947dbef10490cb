//! The HTTP JSON query API (axum): `/api/v1/series`, `/api/v1/query` and
//! `/api/v1/agents`, with an optional bearer token on `/api/*` (the health
//! endpoints are [`crate::health`]'s).
//!
//! `/api/v1/series?tag.K=V&metric=M` lists series keys, filtered by tags.
//!
//! `/api/v1/agents` lists the agents, their incarnations, watermarks, when
//! they were last seen and the readings they reported dropped (the shape:
//! [`super::agents`]).
//!
//! `/api/v1/query` parameters:
//! - a selector: `metric=M` and any of `device=D`, `tag.K=V` (all must match);
//! - `from`, `to` (ms, `[from, to)`, any `i64`), `width` (a stored width in
//!   ms: the agents' window or a roll-up; another gets a `400` listing the
//!   stored ones), `step` (ms, a multiple of `width`, default `width`;
//!   coarser steps are merged on the fly). Points start at `from` rounded up
//!   to the width, then every `step`, so each point is a whole number of
//!   windows at their own alignment (give a `from` that is a multiple of
//!   `step` to align the steps too); the arithmetic is exact for any range.
//!   A range in which no window of the width starts gets a `400`;
//! - `stats`: comma list of `count,sum,min,max,mean,stddev,first,last,pNN`
//!   (default `count,mean,min,max`);
//! - `group_by=K`: merge the selected series per value of tag `K`.
//!
//! One query's work is bounded: the selected series × the steps in
//! `[from, to)` may not exceed `[http] max_points`; a query over it gets a
//! `400` naming the parameters and the limit.
//!
//! Every point carries `revision` (the highest stored revision merged into
//! it) and `final` (see [`crate::finality`]: every agent that reported each
//! merged series is past the point's end plus the lateness, or idle).
//! A bad query gets `400` with `{"error": "..."}` naming the parameter.
//!
//! A query whose first window of `width` has expired under `[retention]` is
//! answered from the finest coarser roll-up that still holds it; the answer
//! says so in `resolution` and a header ([`super::resolution`]).

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use tributary_core::{SeriesKey, Summary, Width};

use super::resolution::{self, Fallback};
use super::stats::{self, Stat, StatValue};
use crate::finality::Finality;
use crate::store::{Query as Store, StoreError};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState<S> {
    /// The store (its query role).
    pub store: S,
    /// The bearer token required on `/api/*`, if any.
    pub token: Option<String>,
    /// When a point is final.
    pub finality: Finality,
    /// The most points (series × steps) one query may ask for.
    pub max_points: u64,
    /// The configured roll-up widths (ms): always answerable, stored
    /// results or not.
    pub rollups_ms: Vec<i64>,
    /// How long each width is kept (a query past it falls back to a
    /// coarser roll-up).
    pub retention: crate::retention::Policy,
}

/// Widths (ms) looked for in the store besides the configured roll-ups
/// when naming the widths a query may ask for: the usual agent windows and
/// roll-ups.
pub const COMMON_WIDTHS_MS: [i64; 18] = [
    1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000,
];

/// The widths (ms) a query may ask for, sorted: the configured `rollups_ms`
/// and every common width that holds stored results.
pub async fn offered_widths<S: Store>(
    store: &S,
    rollups_ms: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let mut widths: Vec<i64> = rollups_ms
        .iter()
        .copied()
        .filter(|w| Width::new(*w).is_ok())
        .collect();
    let common: Vec<Width> = COMMON_WIDTHS_MS
        .iter()
        .filter_map(|&w| Width::new(w).ok())
        .collect();
    widths.extend(store.stored_widths(&common).await?.iter().map(|w| w.ms()));
    widths.sort_unstable();
    widths.dedup();
    Ok(widths)
}

/// A JSON error response.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "query failed");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
}

/// The router (tests drive it with `tower::ServiceExt::oneshot`).
pub fn router<S: Store + Clone + 'static>(state: ApiState<S>) -> Router {
    let api = Router::new()
        .route("/api/v1/series", get(series::<S>))
        .route("/api/v1/query", get(query::<S>))
        .route("/api/v1/agents", get(agents::<S>))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    api.with_state(state)
}

/// The token of an `Authorization` header value with the `Bearer` scheme,
/// matched case-insensitively (RFC 9110 §11.1: auth schemes are).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// Whether `a` equals `b`, in a time that depends on their lengths only
/// (no early exit at the first difference to time the token by).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn auth<S: Clone>(State(st): State<ApiState<S>>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some_and(|t| same(t, token));
        if !ok {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The series selector of a request.
fn matches(key: &SeriesKey, q: &HashMap<String, String>) -> bool {
    q.iter().all(|(k, v)| match k.as_str() {
        "metric" => key.metric() == v,
        "device" => key.device() == v,
        _ => match k.strip_prefix("tag.") {
            Some(t) => key.tag(t) == Some(v.as_str()),
            None => true,
        },
    })
}

async fn series<S: Store + Clone + 'static>(
    State(st): State<ApiState<S>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let all = st.store.series().await.map_err(internal)?;
    let list: Vec<&SeriesKey> = all.iter().filter(|k| matches(k, &q)).collect();
    Ok(Json(json!({ "series": list })))
}

async fn agents<S: Store + Clone + 'static>(
    State(st): State<ApiState<S>>,
) -> Result<Json<Value>, ApiError> {
    let all = st.store.agents().await.map_err(internal)?;
    Ok(Json(super::agents::to_json(&all)))
}

fn int(q: &HashMap<String, String>, name: &str, default: Option<i64>) -> Result<i64, ApiError> {
    match q.get(name) {
        Some(v) => v
            .parse()
            .map_err(|_| bad(format!("`{name}` must be an integer (ms), got {v:?}"))),
        None => default.ok_or_else(|| bad(format!("`{name}` is required"))),
    }
}

fn parse_stats(text: &str) -> Result<Vec<Stat>, ApiError> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            Stat::parse(s).ok_or_else(|| {
                bad(format!(
                    "`stats`: unknown statistic {s:?}; use {} or pNN (0..=100)",
                    stats::NAMES.join(",")
                ))
            })
        })
        .collect()
}

fn render(sum: &Summary, stats: &[Stat]) -> Map<String, Value> {
    stats
        .iter()
        .map(|s| {
            let v = s.value(sum).map_or(Value::Null, StatValue::to_json);
            (s.name().to_string(), v)
        })
        .collect()
}

/// One merged point under construction.
struct Point {
    summary: Summary,
    revision: u32,
    is_final: bool,
}

async fn query<S: Store + Clone + 'static>(
    State(st): State<ApiState<S>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (body, fallback) = answer(&st, &q).await?;
    let mut response = body.into_response();
    if let Some(f) = fallback {
        if let Ok(v) = header::HeaderValue::from_str(&f.header()) {
            response.headers_mut().insert(resolution::HEADER, v);
        }
    }
    Ok(response)
}

/// A parsed query (public, with [`parse_query`], so the query-string
/// fuzz target can check what the parser accepts).
#[derive(Debug)]
pub struct Ask {
    /// The first window start of `width` at or after the asked `from`: the
    /// start of the first step.
    pub first: i64,
    /// The end of the range (exclusive), as asked.
    pub to: i64,
    /// The stored width asked for.
    pub width: Width,
    /// The step (a positive multiple of `width`).
    pub step: i64,
    /// Steps in `[first, to)`.
    pub steps: u64,
    /// The statistics asked for.
    pub stats: Vec<Stat>,
    /// The tag to group by, if any.
    pub group_by: Option<String>,
}

impl Ask {
    /// The start of the step holding window start `start` (`first ≤ start
    /// < to`); exact for any range, as the arithmetic is `i128`.
    pub fn step_of(&self, start: i64) -> i64 {
        let (first, step) = (i128::from(self.first), i128::from(self.step));
        let bucket = first + (i128::from(start) - first).div_euclid(step) * step;
        // first ≤ bucket ≤ start, so it fits; `first` is the safe answer.
        i64::try_from(bucket).unwrap_or(self.first)
    }
}

/// Parses a query's decoded parameters (what axum's `Query` extractor
/// makes of the query string) as `/api/v1/query` does, without a store;
/// the error is the `400`'s message.
pub fn parse_query(q: &HashMap<String, String>) -> Result<Ask, String> {
    parse(q).map_err(|e| e.1)
}

/// Parses a query's parameters.
fn parse(q: &HashMap<String, String>) -> Result<Ask, ApiError> {
    if !q.contains_key("metric") {
        return Err(bad("`metric` is required (with optional device=, tag.K=)"));
    }
    let from = int(q, "from", None)?;
    let to = int(q, "to", None)?;
    if to <= from {
        return Err(bad("`to` must be greater than `from`"));
    }
    let width_ms = int(q, "width", None)?;
    let width = Width::new(width_ms).map_err(|e| bad(format!("`width`: {e}")))?;
    let step = int(q, "step", Some(width_ms))?;
    if step <= 0 || step % width_ms != 0 {
        return Err(bad(format!(
            "`step` ({step}) must be a positive multiple of `width` ({width_ms})"
        )));
    }
    // `from` rounded up to the width, in i128: it may pass i64::MAX.
    let w = i128::from(width_ms);
    let first = (i128::from(from) + w - 1).div_euclid(w) * w;
    let (Ok(first), true) = (i64::try_from(first), first < i128::from(to)) else {
        return Err(bad(format!(
            "no window of `width` {width_ms} ms starts in [`from`, `to`) = [{from}, {to})"
        )));
    };
    // `to > first`, so the span is positive; it overflows only past u64.
    let span = u64::try_from(i128::from(to) - i128::from(first)).unwrap_or(u64::MAX);
    let steps = span.div_ceil(step.unsigned_abs());
    Ok(Ask {
        first,
        to,
        width,
        step,
        steps,
        stats: parse_stats(q.get("stats").map_or("count,mean,min,max", |s| s.as_str()))?,
        group_by: q.get("group_by").cloned(),
    })
}

/// The 400 of a width that holds no results and is no roll-up.
async fn check_width<S: Store>(st: &ApiState<S>, width: Width) -> Result<(), ApiError> {
    if st.rollups_ms.contains(&width.ms()) {
        return Ok(());
    }
    if !st
        .store
        .stored_widths(&[width])
        .await
        .map_err(internal)?
        .is_empty()
    {
        return Ok(());
    }
    let offered = offered_widths(&st.store, &st.rollups_ms)
        .await
        .map_err(internal)?;
    let list: Vec<String> = offered.iter().map(i64::to_string).collect();
    Err(bad(format!(
        "`width`: no results are stored at {} ms; stored widths (ms): {}",
        width.ms(),
        list.join(", ")
    )))
}

/// The 400 of a query asking for more than `max` points.
fn too_many(series: usize, steps: u64, max: u64) -> ApiError {
    bad(format!(
        "the query asks for {series} series × {steps} steps of `step` in [`from`, `to`), more than [http] max_points = {max}; select fewer series (device=, tag.K=) or use a shorter range or a larger `step` (a roll-up `width`)"
    ))
}

/// Parses and answers one query; names the width it was served at when
/// retention made it another than asked.
async fn answer<S: Store>(
    st: &ApiState<S>,
    q: &HashMap<String, String>,
) -> Result<(Json<Value>, Option<Fallback>), ApiError> {
    let mut ask = parse(q)?;
    let now = tributary_runtime::now_ms();
    let fallback = match st.retention.serve(ask.width, ask.first, now) {
        Some(served) if served != ask.width => Some(Fallback {
            requested: ask.width,
            served,
        }),
        _ => None,
    };
    if let Some(f) = fallback {
        ask = resolution::coarsen(ask, f.served);
    }
    if ask.steps > st.max_points {
        return Err(too_many(1, ask.steps, st.max_points));
    }
    check_width(st, ask.width).await?;
    let keys: Vec<SeriesKey> = st
        .store
        .series()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|k| matches(k, q))
        .collect();
    let n = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    if n.saturating_mul(ask.steps) > st.max_points {
        return Err(too_many(keys.len(), ask.steps, st.max_points));
    }
    let Ask {
        first,
        to,
        width,
        step,
        ref stats,
        ref group_by,
        ..
    } = ask;
    // group label -> step start -> point
    let mut groups: BTreeMap<String, (Value, BTreeMap<i64, Point>)> = BTreeMap::new();
    let progress = st.store.progress_of(&keys).await.map_err(internal)?;
    let windows = st
        .store
        .windows_of(&keys, width, first, to)
        .await
        .map_err(internal)?;
    for ((key, progress), windows) in keys.iter().zip(&progress).zip(windows) {
        let final_through = st.finality.final_through(progress, now);
        let (label, ident) = match group_by {
            Some(tag) => {
                let v = key.tag(tag).unwrap_or("").to_string();
                (v.clone(), json!({ tag.as_str(): v }))
            }
            None => (key.to_string(), json!(key)),
        };
        let entry = groups
            .entry(label)
            .or_insert_with(|| (ident, BTreeMap::new()));
        for w in windows {
            let bucket = ask.step_of(w.window.start());
            let is_final = final_through.is_some_and(|f| bucket.saturating_add(step) <= f);
            match entry.1.get_mut(&bucket) {
                Some(p) => {
                    p.summary.merge(&w.summary).map_err(|e| {
                        bad(format!("cannot merge series of different quanta: {e}"))
                    })?;
                    p.revision = p.revision.max(w.revision);
                    p.is_final &= is_final;
                }
                None => {
                    entry.1.insert(
                        bucket,
                        Point {
                            summary: w.summary,
                            revision: w.revision,
                            is_final,
                        },
                    );
                }
            }
        }
    }
    let out = results(groups, group_by.is_some(), stats);
    let mut body = json!({ "step": step, "results": out });
    if let (Some(f), Some(m)) = (fallback, body.as_object_mut()) {
        m.insert("resolution".into(), f.to_json());
    }
    Ok((Json(body), fallback))
}

/// The answer's `results`: per group (or series), its points in time order.
fn results(
    groups: BTreeMap<String, (Value, BTreeMap<i64, Point>)>,
    grouped: bool,
    stats: &[Stat],
) -> Vec<Value> {
    let key_name = if grouped { "group" } else { "series" };
    groups
        .into_values()
        .map(|(ident, points)| {
            let points: Vec<Value> = points
                .into_iter()
                .map(|(t, p)| {
                    let mut m = render(&p.summary, stats);
                    m.insert("t".into(), json!(t));
                    m.insert("revision".into(), json!(p.revision));
                    m.insert("final".into(), json!(p.is_final));
                    Value::Object(m)
                })
                .collect();
            json!({ key_name: ident, "points": points })
        })
        .collect()
}
