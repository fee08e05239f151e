//! The series a health snapshot gives, and how entries with the same
//! labels are merged.

use std::time::Duration;

use prometheus::{proto::MetricFamily, Registry, TextEncoder};
use rpc_ext_registry::{
    health::{RegistrationHealth, RegistrationState, SubscriptionHealth},
    Instance, MemoryRegistry, Registry as _, Resolver,
};

use super::{families, merge, RegistryHealthCollector};
use crate::{encode_openmetrics, encode_text};

fn text(families: &[MetricFamily]) -> String {
    TextEncoder::new().encode_to_string(families).unwrap()
}

/// The sample lines of `text`, without the `# HELP`/`# TYPE` lines.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn registration(port: u16, state: RegistrationState, in_state_for: u64) -> RegistrationHealth {
    RegistrationHealth {
        backend: "etcd",
        service: "echo".into(),
        address: ([10, 0, 0, 1], port).into(),
        state,
        in_state_for: Duration::from_secs(in_state_for),
        renewals_ok: 10,
        renewals_failed: 2,
        reregistrations: 1,
    }
}

fn subscription(instances: usize, stale: bool, age: Option<u64>) -> SubscriptionHealth {
    SubscriptionHealth {
        backend: "consul",
        service: "echo".into(),
        instances,
        last_update_age: age.map(Duration::from_secs),
        watch_restarts: 3,
        errors: 4,
        serving_stale: stale,
    }
}

#[test]
fn every_family_has_a_valid_descriptor() {
    let registry = Registry::new();
    registry
        .register(Box::new(RegistryHealthCollector::new(Default::default())))
        .unwrap();
    // The families of one handle can be served once per registry.
    let second = registry.register(Box::new(RegistryHealthCollector::new(Default::default())));
    assert!(second.is_err());
    // Nothing listed, nothing shown.
    assert_eq!(encode_text(&registry).unwrap(), "");
}

#[test]
fn a_registration_gives_a_state_set_its_time_and_its_counters() {
    let entries = [registration(80, RegistrationState::Reregistering, 7)];
    let text = text(&families::registrations(&entries));
    let labels = r#"backend="etcd",service="echo",address="10.0.0.1:80""#;
    assert_eq!(
        samples(&text),
        [
            format!(r#"rpc_registry_registration_state{{{labels},state="registered"}} 0"#),
            format!(r#"rpc_registry_registration_state{{{labels},state="reregistering"}} 1"#),
            format!("rpc_registry_registration_time_in_state_seconds{{{labels}}} 7"),
            format!(r#"rpc_registry_registration_renewals_total{{{labels},result="ok"}} 10"#),
            format!(r#"rpc_registry_registration_renewals_total{{{labels},result="failed"}} 2"#),
            format!("rpc_registry_registration_reregistrations_total{{{labels}}} 1"),
        ]
    );
    assert!(text.contains("# TYPE rpc_registry_registration_renewals_total counter\n"));
    assert!(text.contains("# TYPE rpc_registry_registration_state gauge\n"));
}

#[test]
fn a_subscription_without_an_answer_yet_has_no_age() {
    let labels = r#"backend="consul",service="echo""#;
    let never = text(&families::subscriptions(&[subscription(0, false, None)]));
    assert_eq!(
        samples(&never),
        [
            format!("rpc_registry_subscription_instances{{{labels}}} 0"),
            format!("rpc_registry_subscription_serving_stale{{{labels}}} 0"),
            format!("rpc_registry_subscription_watch_restarts_total{{{labels}}} 3"),
            format!("rpc_registry_subscription_errors_total{{{labels}}} 4"),
        ]
    );
    let stale = text(&families::subscriptions(&[subscription(2, true, Some(9))]));
    assert_eq!(
        samples(&stale)[..3],
        [
            format!("rpc_registry_subscription_instances{{{labels}}} 2"),
            format!("rpc_registry_subscription_serving_stale{{{labels}}} 1"),
            format!("rpc_registry_subscription_last_update_age_seconds{{{labels}}} 9"),
        ]
    );
}

#[test]
fn registrations_with_the_same_labels_add_their_counters_and_keep_the_worse_state() {
    let merged = merge::registrations(vec![
        registration(81, RegistrationState::Registered, 100),
        registration(80, RegistrationState::Registered, 50),
        registration(80, RegistrationState::Reregistering, 3),
        registration(80, RegistrationState::Reregistering, 5),
    ]);
    assert_eq!(merged.len(), 2, "{merged:?}");
    let port_80 = &merged[0];
    assert_eq!(port_80.address.port(), 80);
    assert_eq!(port_80.state, RegistrationState::Reregistering);
    assert_eq!(
        port_80.in_state_for,
        Duration::from_secs(5),
        "the longer lost"
    );
    assert_eq!(
        (
            port_80.renewals_ok,
            port_80.renewals_failed,
            port_80.reregistrations
        ),
        (30, 6, 3)
    );
    assert_eq!(
        merged[1],
        registration(81, RegistrationState::Registered, 100)
    );

    let both_registered = merge::registrations(vec![
        registration(80, RegistrationState::Registered, 50),
        registration(80, RegistrationState::Registered, 60),
    ]);
    assert_eq!(both_registered[0].in_state_for, Duration::from_secs(60));
}

#[test]
fn subscriptions_with_the_same_labels_add_their_counters_and_keep_the_worse_view() {
    let merged = merge::subscriptions(vec![
        subscription(3, false, None),
        subscription(2, true, Some(9)),
        subscription(4, false, Some(1)),
    ]);
    assert_eq!(merged.len(), 1, "{merged:?}");
    let echo = &merged[0];
    assert_eq!(echo.instances, 2);
    assert!(echo.serving_stale);
    assert_eq!(echo.last_update_age, Some(Duration::from_secs(9)));
    assert_eq!((echo.watch_restarts, echo.errors), (9, 12));
}

#[tokio::test]
async fn series_of_a_registration_go_with_it() {
    let registry = MemoryRegistry::new();
    let echo = registry
        .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
        .await
        .unwrap();
    let _watch = registry.subscribe("echo").await.unwrap();
    let metrics = crate::RpcMetrics::builder().build().unwrap();
    metrics
        .registry()
        .register(Box::new(RegistryHealthCollector::new(registry.health())))
        .unwrap();

    let served = encode_openmetrics(metrics.registry()).unwrap();
    // OpenMetrics names a counter family without `_total`.
    assert!(
        served.contains("# TYPE rpc_registry_registration_renewals counter\n"),
        "{served}"
    );
    assert!(served.contains(
        r#"rpc_registry_registration_state{backend="memory",service="echo",address="127.0.0.1:50051",state="registered"} 1"#
    ));
    assert!(served
        .contains(r#"rpc_registry_subscription_instances{backend="memory",service="echo"} 1"#));

    echo.deregister().await.unwrap();
    let after = encode_text(metrics.registry()).unwrap();
    assert!(!after.contains("rpc_registry_registration_"), "{after}");
    assert!(
        after.contains(r#"rpc_registry_subscription_instances{backend="memory",service="echo"} 0"#),
        "{after}"
    );
}
