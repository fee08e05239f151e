//! [`FastraceSampler`]: which calls the fastrace path records.

/// Which calls the fastrace path
/// ([`RpcTracingBuilder::fastrace`](crate::RpcTracingBuilder::fastrace))
/// records. A call's span is kept or not when its trace reaches this
/// process (a server call with a `traceparent`, or a call starting a new
/// trace); spans made inside it follow it, as fastrace's child spans do. An
/// unsampled call is still propagated (`traceparent` flags `00`), so the
/// services it calls do not record it either.
///
/// ```
/// use rpc_ext_tracing::FastraceSampler;
///
/// // What OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG ask for
/// // (unset: parentbased_always_on):
/// let sampler = FastraceSampler::from_env();
/// # let _ = sampler;
/// // A sampled caller is followed; 1 in 10 new traces is kept:
/// let sampler = FastraceSampler::ParentBased { root_ratio: 0.1 };
/// # let _ = sampler;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FastraceSampler {
    /// A caller's sampled flag decides; a new trace is kept with this
    /// probability (0.0 to 1.0). `parentbased_always_on` (the default) is
    /// `1.0`, `parentbased_always_off` `0.0`, `parentbased_traceidratio`
    /// the ratio given.
    ParentBased {
        /// The share of new traces kept.
        root_ratio: f64,
    },
    /// Every trace reaching this process is kept with this probability,
    /// whatever a caller decided: `always_on` (`1.0`), `always_off`
    /// (`0.0`), `traceidratio`.
    TraceIdRatio(f64),
}

impl Default for FastraceSampler {
    /// `parentbased_always_on`, the OpenTelemetry SDK's default.
    fn default() -> Self {
        Self::ParentBased { root_ratio: 1.0 }
    }
}

impl FastraceSampler {
    /// The sampler `OTEL_TRACES_SAMPLER` names (`always_on`, `always_off`,
    /// `traceidratio`, `parentbased_always_on`, `parentbased_always_off`,
    /// `parentbased_traceidratio`) with the ratio in
    /// `OTEL_TRACES_SAMPLER_ARG` (default 1.0); unset or unsupported names
    /// give the default, `parentbased_always_on` (with a warning).
    #[must_use]
    pub fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Self::from_names(&name, arg.as_deref())
    }

    pub(crate) fn from_names(name: &str, arg: Option<&str>) -> Self {
        let ratio = || {
            arg.and_then(|arg| arg.trim().parse::<f64>().ok())
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .unwrap_or(1.0)
        };
        match name.trim() {
            "" | "parentbased_always_on" => Self::default(),
            "parentbased_always_off" => Self::ParentBased { root_ratio: 0.0 },
            "parentbased_traceidratio" => Self::ParentBased {
                root_ratio: ratio(),
            },
            "always_on" => Self::TraceIdRatio(1.0),
            "always_off" => Self::TraceIdRatio(0.0),
            "traceidratio" => Self::TraceIdRatio(ratio()),
            other => {
                tracing::warn!(
                    sampler = other,
                    "OTEL_TRACES_SAMPLER names a sampler the fastrace path does not have \
                     (supported: always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio); using parentbased_always_on"
                );
                Self::default()
            }
        }
    }

    /// Whether a call under a remote parent (sampled or not) is kept.
    pub(crate) fn keeps_child_of_remote(&self, parent_sampled: bool, trace_id: u128) -> bool {
        match *self {
            Self::ParentBased { .. } => parent_sampled,
            Self::TraceIdRatio(ratio) => ratio_keeps(ratio, trace_id),
        }
    }

    /// Whether a new trace is kept.
    pub(crate) fn keeps_root(&self, trace_id: u128) -> bool {
        match *self {
            Self::ParentBased { root_ratio: ratio } | Self::TraceIdRatio(ratio) => {
                ratio_keeps(ratio, trace_id)
            }
        }
    }
}

/// The OpenTelemetry SDK's `TraceIdRatioBased` rule: the low 64 bits of
/// the trace id, halved, below `ratio` × 2⁶³; so every service with the
/// same ratio keeps the same traces.
fn ratio_keeps(ratio: f64, trace_id: u128) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    // In range: 0 < ratio < 1.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    // The low 64 bits, as the SDK reads them.
    #[allow(clippy::cast_possible_truncation)]
    let low = trace_id as u64;
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId};
    use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

    use super::*;

    #[test]
    fn the_environment_names_the_sampler() {
        assert_eq!(
            FastraceSampler::from_names("", None),
            FastraceSampler::default()
        );
        assert_eq!(
            FastraceSampler::from_names("parentbased_traceidratio", Some("0.25")),
            FastraceSampler::ParentBased { root_ratio: 0.25 }
        );
        assert_eq!(
            FastraceSampler::from_names("parentbased_always_off", Some("0.25")),
            FastraceSampler::ParentBased { root_ratio: 0.0 }
        );
        assert_eq!(
            FastraceSampler::from_names("traceidratio", Some("junk")),
            FastraceSampler::TraceIdRatio(1.0)
        );
        assert_eq!(
            FastraceSampler::from_names("always_off", None),
            FastraceSampler::TraceIdRatio(0.0)
        );
        assert_eq!(
            FastraceSampler::from_names("jaeger_remote", None),
            FastraceSampler::default()
        );
    }

    #[test]
    fn a_remote_parent_decides_under_parent_based_only() {
        let parent_based = FastraceSampler::ParentBased { root_ratio: 0.0 };
        assert!(parent_based.keeps_child_of_remote(true, 7));
        assert!(!parent_based.keeps_child_of_remote(false, 7));
        assert!(!parent_based.keeps_root(7));
        let always_on = FastraceSampler::TraceIdRatio(1.0);
        assert!(always_on.keeps_child_of_remote(false, 7));
        let always_off = FastraceSampler::TraceIdRatio(0.0);
        assert!(!always_off.keeps_child_of_remote(true, 7));
    }

    #[test]
    fn the_ratio_keeps_the_traces_the_sdk_keeps() {
        let sdk = opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(0.3);
        let mut kept = 0;
        for n in 0..2_000u128 {
            let trace_id = n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            let ours = FastraceSampler::ParentBased { root_ratio: 0.3 }.keeps_root(trace_id);
            let SamplingResult { decision, .. } = sdk.should_sample(
                Some(&opentelemetry::Context::new()),
                TraceId::from(trace_id),
                "x",
                &SpanKind::Server,
                &[],
                &[],
            );
            assert_eq!(
                ours,
                decision == SamplingDecision::RecordAndSample,
                "{trace_id:x}"
            );
            kept += usize::from(ours);
        }
        assert!((500..700).contains(&kept), "{kept} of 2000 at 0.3");
        // (A context without a span: the SDK samples it as a root.)
        assert!(!opentelemetry::Context::new().has_active_span());
    }
}
