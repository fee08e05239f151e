//! Registry health as Prometheus series: a real etcd killed long enough
//! for the lease to be lost and restarted, while a real Prometheus scrapes
//! the `/metrics` endpoint that serves the RPC metrics. Every sample
//! Prometheus stored over the test is read back and checked phase by
//! phase, and the Grafana dashboard's "Registry health" row is run over
//! the same window.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use rpc_ext_metrics::{MetricsEndpoint, RegistryHealthCollector, RpcMetrics};
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    health::RegistryHealth,
    Registry, Resolver,
};
use serde_json::Value;
use tests::{eventually, EtcdServer, PrometheusServer};

use crate::support::{instance, promtool_check_metrics, wait_for_ports, WATCH_DEADLINE};

/// How long Prometheus may take to show a step of the outage or the
/// recovery on a loaded machine: etcd's 5 s request timeout, backoff, a
/// restart, then a scrape.
const STEP_DEADLINE: Duration = Duration::from_secs(40);

/// The lease TTL: the registration is given up for lost once it passed
/// unrenewed.
const TTL: Duration = Duration::from_secs(3);

/// The labels of the one registration and the one subscription.
const REGISTRATION: &str = r#"backend="etcd",service="echo",address="127.0.0.1:8301""#;
const SUBSCRIPTION: &str = r#"backend="etcd",service="echo""#;

/// Wall-clock seconds, as Prometheus timestamps its samples.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every sample of the one series `selector` matches, scraped within the
/// last `window` before `at`: timestamp (scrape time) to value.
async fn samples(
    prometheus: &PrometheusServer,
    selector: &str,
    window: Duration,
    at: f64,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url()))
        .query(&[
            ("query", format!("{selector}[{}s]", window.as_secs())),
            ("time", format!("{at:.3}")),
        ])
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(body["status"] == "success", "{selector}: {body}");
    let series = body["data"]["result"].as_array().context("not a matrix")?;
    anyhow::ensure!(series.len() == 1, "{selector}: one series expected: {body}");
    series[0]["values"]
        .as_array()
        .context("no values")?
        .iter()
        .map(|pair| {
            let at = pair[0].as_f64().context("timestamp")?;
            let value = pair[1].as_str().context("value")?.parse()?;
            Ok((at, value))
        })
        .collect()
}

/// A range query (what Grafana sends) over `start..=end`, one point a
/// second: the series it returns.
async fn range_query(
    prometheus: &PrometheusServer,
    promql: &str,
    start: f64,
    end: f64,
) -> anyhow::Result<Vec<Value>> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query_range", prometheus.url()))
        .query(&[
            ("query", promql.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", "1".to_owned()),
        ])
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(body["status"] == "success", "{promql}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .context("not a matrix")
}

/// The values in order with repeats dropped: the sequence of levels a
/// gauge went through.
fn levels(samples: &[(f64, f64)]) -> Vec<f64> {
    let mut levels: Vec<f64> = samples.iter().map(|(_, v)| *v).collect();
    levels.dedup();
    levels
}

/// The values of the samples scraped within `from..to`.
fn between(samples: &[(f64, f64)], from: f64, to: f64) -> Vec<f64> {
    samples
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .map(|(_, v)| *v)
        .collect()
}

/// Waits until Prometheus holds `value` as the latest sample of `selector`.
async fn scraped(prometheus: &PrometheusServer, selector: &str, value: f64) -> anyhow::Result<()> {
    eventually(STEP_DEADLINE, &format!("{selector} == {value}"), || async {
        let seen = prometheus.query_value(selector).await.ok()??;
        (seen == value).then_some(())
    })
    .await
}

/// `promtool check metrics` on a scrape of the endpoint.
async fn promtool_accepts(endpoint: &MetricsEndpoint) -> anyhow::Result<String> {
    let body = reqwest::get(format!("http://{}/metrics", endpoint.local_addr()))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let checked = promtool_check_metrics(&body)?;
    anyhow::ensure!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}; {}{}\n{body}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_and_its_recovery_show_in_the_registry_health_series() -> anyhow::Result<()>
{
    tests::init_test_logging();
    let mut etcd = EtcdServer::start().await?;
    let etcd_endpoint = etcd.endpoint();
    // The registration and the subscription report into one handle, and
    // the one collector is served next to the RPC families.
    let health = RegistryHealth::new();
    let registry = EtcdRegistry::builder([&etcd_endpoint])
        .ttl(TTL)
        .max_backoff(Duration::from_millis(500))
        .health(health.clone())
        .build()
        .await?;
    let resolver = EtcdResolver::builder([&etcd_endpoint])
        .max_backoff(Duration::from_millis(500))
        .health(health.clone())
        .build()
        .await?;
    let metrics = RpcMetrics::builder().build()?;
    metrics
        .registry()
        .register(Box::new(RegistryHealthCollector::new(health)))?;
    let endpoint =
        MetricsEndpoint::serve("127.0.0.1:0".parse()?, metrics.registry().clone()).await?;

    let started = unix_now();
    let registered = registry.register(instance("echo", 8301)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8301], WATCH_DEADLINE).await?;
    let prometheus = PrometheusServer::start(&[endpoint.local_addr().to_string()]).await?;

    // Healthy, as Prometheus sees it: registered, renewed at least twice.
    let state = |state: &str| {
        format!(r#"rpc_registry_registration_state{{{REGISTRATION},state="{state}"}}"#)
    };
    let renewals = |result: &str| {
        format!(r#"rpc_registry_registration_renewals_total{{{REGISTRATION},result="{result}"}}"#)
    };
    scraped(&prometheus, &state("registered"), 1.0).await?;
    eventually(STEP_DEADLINE, "two renewals scraped", || async {
        let ok = prometheus.query_value(&renewals("ok")).await.ok()??;
        (ok >= 2.0).then_some(())
    })
    .await?;

    // etcd killed: Prometheus sees the lease given up and the watch
    // serving stale; the outage lasts a few scrapes more.
    let killed = unix_now();
    etcd.kill();
    let stale = format!("rpc_registry_subscription_serving_stale{{{SUBSCRIPTION}}}");
    scraped(&prometheus, &state("reregistering"), 1.0).await?;
    scraped(&prometheus, &stale, 1.0).await?;
    let scrape_in_outage = promtool_accepts(&endpoint).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // etcd back with its data: registered again, the watch resumed.
    let restarted = unix_now();
    etcd.restart().await?;
    scraped(&prometheus, &state("registered"), 1.0).await?;
    scraped(&prometheus, &stale, 0.0).await?;
    // A few scrapes of the recovered state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended = unix_now();
    // Whole seconds, covering every scrape since the start.
    let window = Duration::from_secs((ended - started).ceil() as u64 + 2);

    let registered_samples = samples(&prometheus, &state("registered"), window, ended).await?;
    let lost_samples = samples(&prometheus, &state("reregistering"), window, ended).await?;
    let ok_samples = samples(&prometheus, &renewals("ok"), window, ended).await?;
    let failed_samples = samples(&prometheus, &renewals("failed"), window, ended).await?;
    let reregistrations = samples(
        &prometheus,
        &format!("rpc_registry_registration_reregistrations_total{{{REGISTRATION}}}"),
        window,
        ended,
    )
    .await?;
    let in_state = samples(
        &prometheus,
        &format!("rpc_registry_registration_time_in_state_seconds{{{REGISTRATION}}}"),
        window,
        ended,
    )
    .await?;
    let instances = samples(
        &prometheus,
        &format!("rpc_registry_subscription_instances{{{SUBSCRIPTION}}}"),
        window,
        ended,
    )
    .await?;
    let stale_samples = samples(&prometheus, &stale, window, ended).await?;
    let errors = samples(
        &prometheus,
        &format!("rpc_registry_subscription_errors_total{{{SUBSCRIPTION}}}"),
        window,
        ended,
    )
    .await?;
    let restarts = samples(
        &prometheus,
        &format!("rpc_registry_subscription_watch_restarts_total{{{SUBSCRIPTION}}}"),
        window,
        ended,
    )
    .await?;
    let ages = samples(
        &prometheus,
        &format!("rpc_registry_subscription_last_update_age_seconds{{{SUBSCRIPTION}}}"),
        window,
        ended,
    )
    .await?;
    eprintln!(
        "{} scrapes over {:.1} s; outage {:.1} s",
        instances.len(),
        ended - started,
        restarted - killed
    );

    // Every scrape holds every series: one timestamp list for all.
    let scrape_times: Vec<f64> = instances.iter().map(|(at, _)| *at).collect();
    for (name, series) in [
        ("registered", &registered_samples),
        ("reregistering", &lost_samples),
        ("renewals ok", &ok_samples),
        ("renewals failed", &failed_samples),
        ("reregistrations", &reregistrations),
        ("time in state", &in_state),
        ("serving stale", &stale_samples),
        ("errors", &errors),
        ("watch restarts", &restarts),
        ("last update age", &ages),
    ] {
        let times: Vec<f64> = series.iter().map(|(at, _)| *at).collect();
        assert_eq!(times, scrape_times, "{name}");
    }
    let outage_scrapes = between(&instances, killed, restarted).len();
    assert!(
        outage_scrapes >= 4,
        "{outage_scrapes} scrapes during the outage"
    );

    // The state went to re-registering once and came back, a state set
    // of exactly one 1 at every scrape.
    assert_eq!(levels(&registered_samples), [1.0, 0.0, 1.0]);
    assert_eq!(levels(&lost_samples), [0.0, 1.0, 0.0]);
    for ((at, registered), (_, lost)) in registered_samples.iter().zip(&lost_samples) {
        assert_eq!(registered + lost, 1.0, "at {at}");
    }
    // Lost only after the kill, registered again only after the restart.
    let first_lost = lost_samples
        .iter()
        .find(|(_, v)| *v == 1.0)
        .map(|(at, _)| *at)
        .expect("a lost sample");
    let last_lost = lost_samples
        .iter()
        .rev()
        .find(|(_, v)| *v == 1.0)
        .map(|(at, _)| *at)
        .expect("a lost sample");
    assert!(first_lost > killed);
    let back = registered_samples
        .iter()
        .find(|(at, v)| *at > last_lost && *v == 1.0)
        .map(|(at, _)| *at)
        .expect("registered again");
    assert!(
        back > restarted,
        "registered again at {back}, restarted at {restarted}"
    );

    // Renewals: none failed before the kill, failures during the outage,
    // none once registered again; confirmed ones stood still while lost
    // and went on after.
    let failed_before = between(&failed_samples, started, killed);
    assert!(failed_before.iter().all(|v| *v == 0.0), "{failed_before:?}");
    let failed_in_outage = between(&failed_samples, first_lost, restarted);
    assert!(
        failed_in_outage.iter().all(|v| *v >= 1.0),
        "failures counted once lost: {failed_in_outage:?}"
    );
    let failed_after = between(&failed_samples, back, ended + 1.0);
    assert!(
        failed_after.windows(2).all(|w| w[0] == w[1]),
        "no failure once registered again: {failed_after:?}"
    );
    assert!(between(&ok_samples, started, killed)
        .iter()
        .any(|v| *v >= 2.0));
    let ok_while_lost = levels(
        &ok_samples
            .iter()
            .copied()
            .filter(|(at, _)| (first_lost..=last_lost).contains(at))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        ok_while_lost.len(),
        1,
        "no renewal while lost: {ok_while_lost:?}"
    );
    let ok_last = ok_samples.last().expect("samples").1;
    assert!(
        ok_last > ok_while_lost[0],
        "renewals resumed: {ok_samples:?}"
    );

    // Written again exactly once.
    assert_eq!(levels(&reregistrations), [0.0, 1.0]);
    // The time in state restarts at each change and counts from it: from
    // the loss (after the kill) while lost, from the new write (after the
    // restart) once back. The collector reads the handle a little after
    // the scrape's timestamp: 0.5 s of slack for that.
    for (at, seconds) in &in_state {
        if (first_lost..=last_lost).contains(at) {
            assert!(
                *seconds <= at - killed + 0.5,
                "at {at}: lost for {seconds} s"
            );
        }
        if *at >= back {
            assert!(
                *seconds <= at - restarted + 0.5,
                "at {at}: back for {seconds} s"
            );
        }
    }
    let longest_lost = in_state
        .iter()
        .filter(|(at, _)| (first_lost..=last_lost).contains(at))
        .map(|(_, s)| *s)
        .fold(0.0, f64::max);
    assert!(
        longest_lost >= last_lost - first_lost,
        "lost for {longest_lost} s by its last sample, first seen lost {} s before",
        last_lost - first_lost
    );

    // The resolver kept its one instance throughout, stale while etcd was
    // down and fresh again after.
    assert!(instances.iter().all(|(_, v)| *v == 1.0), "{instances:?}");
    assert_eq!(levels(&stale_samples), [0.0, 1.0, 0.0]);
    let stale_from = stale_samples
        .iter()
        .find(|(_, v)| *v == 1.0)
        .map(|(at, _)| *at)
        .expect("a stale sample");
    let stale_until = stale_samples
        .iter()
        .rev()
        .find(|(_, v)| *v == 1.0)
        .map(|(at, _)| *at)
        .expect("a stale sample");
    assert!(stale_from > killed);
    let fresh_again = stale_samples
        .iter()
        .find(|(at, v)| *at > stale_until && *v == 0.0)
        .map(|(at, _)| *at)
        .expect("fresh again");
    assert!(
        fresh_again > restarted,
        "fresh at {fresh_again}, restarted at {restarted}"
    );
    // The set's age grew through the outage: nothing confirmed it since
    // the kill. Fresh again once the watch resumed.
    for (at, age) in &ages {
        if (stale_from..=stale_until).contains(at) {
            assert!(
                *age >= at - killed - 0.5,
                "at {at}: age {age}, killed {killed}"
            );
        }
    }
    let (last_at, last_age) = *ages.last().expect("samples");
    assert!(
        last_age <= last_at - restarted + 1.0,
        "age {last_age} at the end"
    );
    // Errors and watch restarts: none before the kill, some after, each
    // interruption reported once and followed by one restart.
    assert_eq!(errors.first().map(|s| s.1), Some(0.0));
    assert_eq!(restarts.first().map(|s| s.1), Some(0.0));
    let (errors_last, restarts_last) = (
        errors.last().expect("samples").1,
        restarts.last().expect("samples").1,
    );
    assert!(errors_last >= 1.0, "{errors:?}");
    assert_eq!(errors_last, restarts_last);
    assert!(
        between(&errors, stale_from, stale_until + 0.001)
            .iter()
            .all(|v| *v >= 1.0),
        "errors counted while stale: {errors:?}"
    );

    eprintln!(
        "{outage_scrapes} scrapes during the outage, {} lost; renewals failed {}, ok {ok_last}; \
         errors {errors_last}, watch restarts {restarts_last}; longest time lost {longest_lost:.1} s, \
         oldest set {:.1} s",
        between(&lost_samples, first_lost, last_lost + 0.001).len(),
        failed_samples.last().expect("samples").1,
        ages.iter().map(|(_, a)| *a).fold(0.0, f64::max),
    );

    // The exposition is valid by promtool, families and types as named.
    for family in [
        "# TYPE rpc_registry_registration_state gauge",
        "# TYPE rpc_registry_registration_time_in_state_seconds gauge",
        "# TYPE rpc_registry_registration_renewals_total counter",
        "# TYPE rpc_registry_registration_reregistrations_total counter",
        "# TYPE rpc_registry_subscription_instances gauge",
        "# TYPE rpc_registry_subscription_serving_stale gauge",
        "# TYPE rpc_registry_subscription_last_update_age_seconds gauge",
        "# TYPE rpc_registry_subscription_watch_restarts_total counter",
        "# TYPE rpc_registry_subscription_errors_total counter",
    ] {
        assert!(
            scrape_in_outage.contains(family),
            "{family}:\n{scrape_in_outage}"
        );
    }

    // Every query of the dashboard's "Registry health" row, as Grafana
    // sends it, has data over the window.
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/dashboards/rpc.json"))?;
    let panels = dashboard["panels"].as_array().context("panels")?;
    let row = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == "Registry health")
        .context("no Registry health row")?;
    let row_panels: Vec<&Value> = panels[row + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .collect();
    assert_eq!(row_panels.len(), 8);
    let mut queries = BTreeMap::new();
    for panel in row_panels {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"]
                .as_str()
                .context("expr")?
                .replace("$__rate_interval", "1m");
            let series = range_query(&prometheus, &expr, started, ended).await?;
            assert!(!series.is_empty(), "{}: {expr} has no data", panel["title"]);
            queries.insert(expr, series.len());
        }
    }
    assert_eq!(queries.len(), 9, "{queries:?}");

    registered.deregister().await?;
    drop((watch, resolver));
    endpoint.shutdown().await;
    Ok(())
}
