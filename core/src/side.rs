//! Which end of a call is observing it.

/// The end of the call a layer observes: the server serving it, or the
/// client making it. Metrics are `rpc_server_*` or `rpc_client_*`, spans of
/// kind server or client, and what counts as an error differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process serving the call.
    Server,
    /// The process making the call.
    Client,
}

impl Side {
    /// Whether this is the server end.
    #[must_use]
    pub fn is_server(self) -> bool {
        self == Side::Server
    }
}
