//! Exemplars on the duration histograms: each traced call's observation
//! keeps its trace id and span id in a slot beside its bucket, and the
//! OpenMetrics encoder appends the slot to the bucket's line.
//!
//! - `trace`: the ids, read from the OpenTelemetry context at call start.
//! - `slot`: one bucket's last exemplar, lock-free.
//! - `series`: the slots of each series, and each family's series.
//! - `clock`: exemplar timestamps from the monotonic clock calls read.
//! - `gather`: how the encoder finds the exemplars of a registry.
//! - `encode`: the OpenMetrics exemplar syntax.

mod clock;
mod encode;
mod gather;
mod series;
mod slot;
mod trace;

pub(crate) use clock::anchor;
pub(crate) use encode::append_histogram;
pub(crate) use gather::{gather, WithExemplars};
pub(crate) use series::{FamilyExemplars, SeriesExemplars};
pub(crate) use trace::{current, TraceIds};

#[cfg(all(test, feature = "exemplars"))]
mod tests;
