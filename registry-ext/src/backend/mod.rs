//! Plumbing that the network backends (etcd, Consul, Kubernetes) share and
//! nothing else uses: retry backoff, the per-service watch tasks, and
//! `Error::backend`.
//!
//! lib.rs compiles this module only when at least one backend is enabled;
//! see the comment there.

pub(crate) mod backoff;
pub(crate) mod subscriptions;

use crate::{BoxError, Error};

impl Error {
    pub(crate) fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }
}
