//! The one ZooKeeper session of a registry or resolver, opened on first use
//! and replaced once it has ended.

use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, info};
use zookeeper_client as zk;

use super::{zk_error, BACKEND};
use crate::{Error, Result};

/// Hands out the client of the live session, opening a session when there
/// is none: never opened yet, expired, closed or refused.
///
/// A session survives connection losses shorter than its timeout on its
/// own (the client reconnects to any server of the connect string), so a
/// session is replaced only after it is over for good.
pub(super) struct SessionSource {
    connect_string: String,
    session_timeout: Duration,
    connect_timeout: Duration,
    /// `user:password` for the `digest` scheme.
    digest: Option<Vec<u8>>,
    current: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    client: Option<zk::Client>,
    /// A session the client declared expired that the server may still
    /// hold, to be resumed before any new one is opened.
    given_up: Option<zk::SessionInfo>,
}

/// Leaves the credentials out.
impl std::fmt::Debug for SessionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSource")
            .field("connect_string", &self.connect_string)
            .field("session_timeout", &self.session_timeout)
            .field("authenticated", &self.digest.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionSource {
    pub(super) fn new(
        connect_string: String,
        session_timeout: Duration,
        connect_timeout: Duration,
        digest: Option<Vec<u8>>,
    ) -> Self {
        Self {
            connect_string,
            session_timeout,
            connect_timeout,
            digest,
            current: Mutex::default(),
        }
    }

    /// Whether nodes are created for an authenticated user.
    pub(super) fn authenticated(&self) -> bool {
        self.digest.is_some()
    }

    /// The live session's client, or the client of a session resumed or
    /// opened now.
    ///
    /// Callers that find their client's session over call this again and
    /// all get the same next session: it is set up once, under the lock.
    pub(super) async fn client(&self) -> Result<zk::Client> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.client.take() {
            match client.state() {
                state if !state.is_terminated() => {
                    current.client = Some(client.clone());
                    return Ok(client);
                }
                zk::SessionState::Expired => current.given_up = Some(client.into_session()),
                // Closed or refused: nothing to resume.
                _ => {}
            }
        }
        if let Some(session) = current.given_up.clone() {
            match self
                .connect(self.connector().with_session(session.clone()))
                .await
            {
                Ok(client) => {
                    info!(session = %client.session_id(), "ZooKeeper session resumed");
                    current.given_up = None;
                    current.client = Some(client.clone());
                    return Ok(client);
                }
                // No server reached: the session may yet be resumed.
                Err(error) if unreachable(&error) => {
                    return Err(self.error(error));
                }
                Err(error) => {
                    debug!(session = %session.id(), %error, "ZooKeeper session not resumed");
                    current.given_up = None;
                }
            }
        }
        let client = self
            .connect(self.connector())
            .await
            .map_err(|e| self.error(e))?;
        info!(
            session = %client.session_id(),
            timeout = ?client.session_timeout(),
            "ZooKeeper session opened"
        );
        current.client = Some(client.clone());
        Ok(client)
    }

    fn connector(&self) -> zk::Connector {
        // Fail at once when no server accepts the connection, rather than
        // cycling through the servers for a whole session timeout: the
        // callers retry with their own backoff.
        let connector = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly();
        match &self.digest {
            Some(digest) => connector.with_auth("digest", digest),
            None => connector,
        }
    }

    async fn connect(&self, connector: zk::Connector) -> Result<zk::Client, zk::Error> {
        let connecting = connector.connect(&self.connect_string);
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .unwrap_or(Err(zk::Error::Timeout))
    }

    fn error(&self, error: zk::Error) -> Error {
        match error {
            zk::Error::BadArguments(reason) => Error::Config(format!(
                "ZooKeeper connect string {:?}: {reason}",
                self.connect_string
            )),
            zk::Error::Timeout => Error::Timeout {
                backend: BACKEND,
                timeout: self.connect_timeout,
            },
            error => zk_error("connect to", &self.connect_string, error),
        }
    }
}

/// Whether connecting failed for want of a server, rather than being
/// refused by one.
fn unreachable(error: &zk::Error) -> bool {
    matches!(
        error,
        zk::Error::NoHosts | zk::Error::Timeout | zk::Error::ConnectionLoss
    )
}
