//! Cross-crate integration tests: one binary, so the workspace links once.

mod axum_routes;
mod consul_backend;
mod discovery_e2e;
mod etcd_data_loss;
mod etcd_faults;
mod etcd_network;
mod etcd_registry;
mod export_faults;
mod graceful_shutdown;
mod harness_selftest;
mod k8s_backend;
mod k8s_health;
mod k8s_liveness;
mod metrics_endpoint;
mod metrics_prometheus;
mod otlp_export;
mod readme_wiring;
mod registry_health;
mod registry_health_metrics;
mod semconv_conformance;
mod streaming;
mod support;
mod thrift_e2e;
mod tracing_otlp;
mod volo_discover_leak;
mod volo_http;
