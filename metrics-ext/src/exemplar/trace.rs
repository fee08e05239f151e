//! The trace an exemplar points to: read from the current OpenTelemetry
//! context when a call starts (feature `exemplars`).

use std::num::NonZeroU64;

/// A sampled span's trace id and span id, laid out to keep every call's
/// recorder small: 8-byte words (a `u128` would align it to 16), and a span
/// id that is never zero (a valid span's), so that `Option<TraceIds>` takes
/// no more room than the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceIds {
    /// The trace id's high and low 64 bits.
    pub(crate) trace_id: [u64; 2],
    pub(crate) span_id: NonZeroU64,
}

impl TraceIds {
    /// The ids of a 16-byte trace id and an 8-byte span id (big-endian, as
    /// written in hex); `None` for a zero span id.
    pub(crate) fn new(trace_id: u128, span_id: u64) -> Option<Self> {
        Some(Self {
            trace_id: [(trace_id >> 64) as u64, trace_id as u64],
            span_id: NonZeroU64::new(span_id)?,
        })
    }

    /// The trace id as one number.
    pub(crate) fn trace_id(&self) -> u128 {
        (u128::from(self.trace_id[0]) << 64) | u128::from(self.trace_id[1])
    }
}

/// The ids of the current OpenTelemetry span, if it is valid and sampled:
/// an unsampled span's trace is never exported, so an exemplar would point
/// nowhere. Reads the context of the `opentelemetry` crate version this
/// crate depends on (the one rpc-ext-tracing attaches), without cloning it.
#[cfg(feature = "exemplars")]
#[inline]
pub(crate) fn current() -> Option<TraceIds> {
    use opentelemetry::trace::TraceContextExt;
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let context = span.span_context();
        if !(context.is_sampled() && context.is_valid()) {
            return None;
        }
        TraceIds::new(
            u128::from_be_bytes(context.trace_id().to_bytes()),
            u64::from_be_bytes(context.span_id().to_bytes()),
        )
    })
}

/// Without the `exemplars` feature there is no context to read.
#[cfg(not(feature = "exemplars"))]
#[inline]
pub(crate) fn current() -> Option<TraceIds> {
    None
}

#[cfg(all(test, feature = "exemplars"))]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    use super::*;

    #[test]
    fn an_option_of_ids_is_no_larger_than_the_ids() {
        assert_eq!(std::mem::size_of::<Option<TraceIds>>(), 24);
        let ids = TraceIds::new(u128::MAX - 1, 7).unwrap();
        assert_eq!(ids.trace_id(), u128::MAX - 1);
        assert_eq!(TraceIds::new(1, 0), None);
    }

    fn attached(flags: TraceFlags) -> opentelemetry::ContextGuard {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::current()
            .with_remote_span_context(context)
            .attach()
    }

    #[test]
    fn the_sampled_span_of_the_current_context() {
        assert_eq!(current(), None, "no span");
        {
            let _guard = attached(TraceFlags::SAMPLED);
            assert_eq!(
                current(),
                TraceIds::new(
                    0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                    0x00f0_67aa_0ba9_02b7
                )
            );
        }
        let _guard = attached(TraceFlags::default());
        assert_eq!(current(), None, "not sampled");
    }
}
