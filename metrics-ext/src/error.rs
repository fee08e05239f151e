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
    /// A setting cannot work (for example a zero connection cap, an
    /// empty bearer token or a malformed recognized method); the message
    /// says which. It never contains a secret.
    #[error("metrics configuration: {0}")]
    Config(String),
    /// Metrics could not be encoded.
    #[error("encoding metrics: {0}")]
    Encode(String),
}
