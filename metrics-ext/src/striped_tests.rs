//! Striped families scrape exactly what `prometheus`' own would, whatever
//! threads wrote them.

use std::sync::Barrier;

use prometheus::{
    core::Collector, Encoder, HistogramOpts, HistogramVec, IntGaugeVec, Opts, TextEncoder,
};

use super::{stripes, StripedGaugeVec, StripedHistogramVec};
use crate::{encode_text, Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};

const THREADS: usize = 5;
const PER_THREAD: u64 = 1000;
/// Exact in binary, so the sums are exact in any order.
const VALUES: [f64; 4] = [0.5, 1.5, 3.0, 8.0];

fn text(collector: &dyn Collector) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&collector.collect(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Runs `f(thread)` on [`THREADS`] threads at once: more threads than
/// stripes on most machines, so stripes are shared too.
fn on_threads(f: impl Fn(usize) + Sync) {
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (f, start) = (&f, &start);
            scope.spawn(move || {
                start.wait();
                f(thread)
            });
        }
    });
}

#[test]
fn a_histogram_observed_from_threads_scrapes_the_exact_sums_counts_and_buckets() {
    let opts = || HistogramOpts::new("h_seconds", "Help.").buckets(vec![1.0, 2.0, 4.0]);
    let ours = StripedHistogramVec::new(opts(), &["b", "a"]).unwrap();
    let theirs = HistogramVec::new(opts(), &["b", "a"]).unwrap();
    on_threads(|thread| {
        let series = ours.with_label_values(&["x", "y"]);
        for i in 0..PER_THREAD {
            let value = VALUES[i as usize % VALUES.len()];
            series.observe(super::stripe() + thread, value);
            theirs.with_label_values(&["x", "y"]).observe(value);
        }
    });
    let n = THREADS as u64 * PER_THREAD / 4;
    let expected = format!(
        "# HELP h_seconds Help.\n# TYPE h_seconds histogram\n\
         h_seconds_bucket{{a=\"y\",b=\"x\",le=\"1\"}} {n}\n\
         h_seconds_bucket{{a=\"y\",b=\"x\",le=\"2\"}} {}\n\
         h_seconds_bucket{{a=\"y\",b=\"x\",le=\"4\"}} {}\n\
         h_seconds_bucket{{a=\"y\",b=\"x\",le=\"+Inf\"}} {}\n\
         h_seconds_sum{{a=\"y\",b=\"x\"}} {}\n\
         h_seconds_count{{a=\"y\",b=\"x\"}} {}\n",
        2 * n,
        3 * n,
        4 * n,
        13 * n,
        4 * n,
    );
    assert_eq!(text(&ours), expected);
    assert_eq!(text(&ours), text(&theirs));
    assert!(stripes() >= 1 && stripes() <= 16);
}

#[test]
fn a_gauge_moved_from_threads_scrapes_the_sum_of_its_stripes() {
    let opts = || Opts::new("g", "Help.");
    let ours = StripedGaugeVec::new(opts(), &["m"]).unwrap();
    let theirs = IntGaugeVec::new(opts(), &["m"]).unwrap();
    on_threads(|thread| {
        let series = ours.with_label_values(&["x"]);
        // Up on one stripe, down on another, as a call that moved.
        for _ in 0..PER_THREAD {
            series.add(thread, 1);
            series.add(thread + 1, -1);
        }
        series.add(thread, 2);
        theirs.with_label_values(&["x"]).add(2);
    });
    assert_eq!(
        text(&ours),
        "# HELP g Help.\n# TYPE g gauge\ng{m=\"x\"} 10\n"
    );
    assert_eq!(text(&ours), text(&theirs));
}

#[test]
fn in_flight_gauges_return_to_zero_after_calls_from_threads() {
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .build()
        .unwrap();
    let call = || Call::rpc(Side::Server, RpcSystem::Grpc, "s", "m");
    let active = |n: usize| {
        format!(r#"rpc_server_active_requests{{rpc_method="s/m",rpc_system_name="grpc"}} {n}"#)
    };
    let open = Barrier::new(THREADS + 1);
    let close = Barrier::new(THREADS + 1);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..PER_THREAD {
                    let mut recorder = metrics.start_call(call());
                    recorder.request_size(3);
                    recorder.finish(GrpcCode::OK, Some(5));
                }
                let held = metrics.start_call(call());
                open.wait();
                close.wait();
                held.finish(GrpcCode::OK, None);
            });
        }
        open.wait();
        let text = encode_text(metrics.registry()).unwrap();
        assert!(text.contains(&active(THREADS)), "{text}");
        close.wait();
    });
    let text = encode_text(metrics.registry()).unwrap();
    let calls = THREADS as u64 * (PER_THREAD + 1);
    let sized = THREADS as u64 * PER_THREAD;
    for line in [
        active(0),
        format!(
            r#"rpc_server_request_size_bytes_sum{{rpc_method="s/m",rpc_system_name="grpc"}} {}"#,
            3 * sized
        ),
        format!(
            r#"rpc_server_request_size_bytes_count{{rpc_method="s/m",rpc_system_name="grpc"}} {sized}"#
        ),
        format!(
            r#"rpc_server_response_size_bytes_sum{{rpc_method="s/m",rpc_system_name="grpc"}} {}"#,
            5 * sized
        ),
        format!(
            r#"rpc_server_call_duration_seconds_count{{error_type="",rpc_method="s/m",rpc_response_status_code="OK",rpc_system_name="grpc"}} {calls}"#
        ),
        format!(
            r#"rpc_server_call_duration_seconds_bucket{{error_type="",rpc_method="s/m",rpc_response_status_code="OK",rpc_system_name="grpc",le="+Inf"}} {calls}"#
        ),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

#[test]
fn buckets_out_of_order_are_refused_when_the_metrics_are_built() {
    for buckets in [vec![1.0, 0.5], vec![0.5, 0.5], vec![0.5, f64::NAN]] {
        assert!(
            RpcMetrics::builder()
                .duration_buckets(buckets.clone())
                .build()
                .is_err(),
            "{buckets:?}"
        );
    }
    // A trailing `+Inf` is the count, as in `prometheus`: accepted.
    assert!(RpcMetrics::builder()
        .duration_buckets(vec![0.5, 1.0, f64::INFINITY])
        .build()
        .is_ok());
}

#[test]
fn an_empty_bucket_list_counts_by_the_default_bounds() {
    let vec = StripedHistogramVec::new(HistogramOpts::new("d_seconds", "h"), &["a"]).unwrap();
    assert_eq!(vec.bounds(), prometheus::DEFAULT_BUCKETS);
}
