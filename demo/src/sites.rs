//! The demo's check of the query API grouped by the agents' `site` tag:
//! every (metric, site, window) point judged by the oracle's statistics of
//! the readings of the site's series.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tributary_core::{SeriesKey, Summary};
use tributary_oracle::Readings;

use crate::truth::{self, Verdict, FLOOR_SCALE};

/// The statistics the group check compares.
const GROUP_STATS: &str = "count,sum,min,max,mean,stddev,first,last,p1,p50,p99";

/// The points of a query grouped by `site`, per (site, t).
async fn query(
    client: &reqwest::Client,
    http: SocketAddr,
    metric: &str,
    (from, to, width): (i64, i64, i64),
) -> anyhow::Result<BTreeMap<(String, i64), Value>> {
    let url = format!(
        "http://{http}/api/v1/query?metric={metric}&from={from}&to={to}&width={width}&group_by=site&stats={GROUP_STATS}"
    );
    let body = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("querying {url}"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("parsing {url}"))?;
    let mut got = BTreeMap::new();
    for group in v["results"].as_array().into_iter().flatten() {
        let site = group["group"]["site"].as_str().unwrap_or("").to_string();
        for p in group["points"].as_array().into_iter().flatten() {
            got.insert(
                (site.clone(), p["t"].as_i64().unwrap_or(i64::MIN)),
                p.clone(),
            );
        }
    }
    Ok(got)
}

/// Queries the API (as the dashboard's group view does) for every metric
/// grouped by `site`, one point per window, and judges each point's
/// statistics by the oracle's statistics of the readings of the site's
/// series (quantiles at the coarsest scale of the stored windows merged).
pub async fn check(
    http: SocketAddr,
    want: &Readings,
    stored: &BTreeMap<(SeriesKey, i64), Summary>,
    width: i64,
) -> anyhow::Result<Verdict> {
    let windows = want.windows(width)?;
    let (Some(from), Some(last)) = (
        windows.keys().map(|(_, t)| *t).min(),
        windows.keys().map(|(_, t)| *t).max(),
    ) else {
        return Ok(Verdict::default());
    };
    let to = last + width;
    let stats: Vec<&str> = GROUP_STATS.split(',').collect();
    // As the sinks do: reqwest has no bundled crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let metrics: BTreeSet<&str> = want.series().map(|s| s.metric.as_str()).collect();
    let mut verdict = Verdict::default();
    for metric in metrics {
        let truth = want.grouped(metric, "site", width, (from, to, width))?;
        let scales = truth::group_scales(stored, metric, "site", (from, to, width));
        let mut got = query(&client, http, metric, (from, to, width)).await?;
        for ((site, t), stats_want) in &truth {
            verdict.checked += 1;
            let what = format!("{metric} site={site} t={t}");
            let Some(point) = got.remove(&(site.clone(), *t)) else {
                verdict.record(what, vec!["no point".into()]);
                continue;
            };
            let scale = scales
                .get(&(site.clone(), *t))
                .copied()
                .unwrap_or(FLOOR_SCALE);
            verdict.record(what, truth::judge_point(&point, stats_want, &stats, scale));
        }
        for (site, t) in got.into_keys() {
            verdict.record(
                format!("{metric} site={site} t={t}"),
                vec!["a point the readings do not explain".into()],
            );
        }
    }
    Ok(verdict)
}
