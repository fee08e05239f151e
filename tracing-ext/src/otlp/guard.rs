//! The handle that owns an installed pipeline and shuts it down in time.

use std::{sync::Arc, time::Duration};

use opentelemetry_sdk::trace::SdkTracerProvider;

use super::Error;
use crate::processor::ExportStats;

/// Owns the tracer provider; [`shutdown`](Self::shutdown) exports what is
/// queued and stops export, within one deadline (default 5 s, set with
/// [`OtlpTracing::shutdown_timeout`](super::OtlpTracing::shutdown_timeout))
/// whatever the collector does. Dropping it does the same, logging failures.
///
/// Export runs on the pipeline's own thread and runtime, so shutting down
/// never waits on the application's runtime. Called from a Tokio
/// multi-thread runtime, the wait is done in `block_in_place`, so the
/// runtime's other tasks keep running; dropped on a current-thread runtime,
/// the guard starts the shutdown and does not wait (call
/// [`shutdown`](Self::shutdown) there to be sure the spans left).
#[derive(Debug)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct TracingGuard {
    pub(super) provider: Option<SdkTracerProvider>,
    pub(super) stats: Arc<ExportStats>,
    pub(super) shutdown_timeout: Duration,
}

impl TracingGuard {
    /// The provider, to build [`RpcTracing`](crate::RpcTracing) with
    /// [`tracer_provider`](crate::RpcTracingBuilder::tracer_provider) when
    /// not installed globally.
    #[must_use]
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider.as_ref().expect("present until shutdown")
    }

    /// Spans ended, exported, failed and dropped so far (clone the `Arc`
    /// to expose them, e.g. with `prometheus::ExportStatsCollector`).
    #[must_use]
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Exports what is queued, then shuts the provider down, all within the
    /// shutdown deadline. Spans that could not be exported by then are
    /// reported in [`Error::SpansLost`].
    pub fn shutdown(mut self) -> Result<(), Error> {
        outside_runtime(|| self.shutdown_inner())
    }

    fn shutdown_inner(&mut self) -> Result<(), Error> {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        let pending = self.stats.pending();
        let exported = self.stats.exported();
        let result = provider.shutdown_with_timeout(self.shutdown_timeout);
        let lost = pending.saturating_sub(self.stats.exported() - exported);
        shutdown_outcome(result, lost)
    }
}

/// What a shutdown that left `lost` spans unexported, and ended with
/// `result`, reports.
pub(super) fn shutdown_outcome(
    result: Result<(), opentelemetry_sdk::error::OTelSdkError>,
    lost: u64,
) -> Result<(), Error> {
    match result {
        Ok(()) if lost == 0 => Ok(()),
        Ok(()) => Err(Error::SpansLost {
            lost,
            cause: "the exporter failed".into(),
        }),
        Err(error) if lost == 0 => Err(Error::Shutdown(error)),
        Err(error) => Err(Error::SpansLost {
            lost,
            cause: error.to_string(),
        }),
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if self.provider.is_none() {
            return;
        }
        let on_current_thread_runtime = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
        });
        if on_current_thread_runtime {
            // Blocking here would stop the only runtime thread for up to the
            // deadline: shut down on a thread of its own instead.
            let mut detached = TracingGuard {
                provider: self.provider.take(),
                stats: self.stats.clone(),
                shutdown_timeout: self.shutdown_timeout,
            };
            let started = std::thread::Builder::new()
                .name("tracing-ext-shutdown".into())
                .spawn(move || detached.log_shutdown());
            if started.is_err() {
                tracing::warn!("cannot start the shutdown thread; queued spans are lost");
            }
            return;
        }
        outside_runtime(|| self.log_shutdown());
    }
}

impl TracingGuard {
    fn log_shutdown(&mut self) {
        if let Err(error) = self.shutdown_inner() {
            tracing::warn!(%error, "tracer provider shutdown failed");
        }
    }
}

/// Runs a blocking wait so that a Tokio multi-thread runtime it is called
/// from keeps running its other tasks.
pub(super) fn outside_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
