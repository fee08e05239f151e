//! The error type of this crate.

/// What can go wrong setting up metrics or serving them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An instrument could not be created or registered (for example, the
    /// given registry already holds a metric of the same name).
    #[error("prometheus: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The endpoint could not bind or serve.
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// Metrics could not be encoded.
    #[error("encoding metrics: {0}")]
    Encode(String),
}
