//! A small pool of `PeerService` clients, one per peer address, shared by
//! the background workers.
//!
//! A tarpc client multiplexes concurrent calls over one connection, so one
//! per address is enough. A client whose call failed at the transport level
//! is forgotten by the caller ([`PeerPool::forget`]) and the next call
//! connects again; that is the whole reconnect policy (the workers retry on
//! their next round).

use common::rpc::peer::PeerServiceClient;
use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, PoisonError};

/// Most clients kept; past this the pool starts over (peers that left keep
/// no connection open for long).
const MAX_CLIENTS: usize = 1024;

/// Clients by `host:port`.
#[derive(Default)]
pub(crate) struct PeerPool {
    clients: Mutex<HashMap<String, PeerServiceClient>>,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.clients.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("PeerPool").field("clients", &n).finish()
    }
}

impl PeerPool {
    /// The client for `addr`, connecting (within
    /// [`common::transport::CONNECT_TIMEOUT`]) if there is none.
    ///
    /// Errors: the connect error.
    pub(crate) async fn get(&self, addr: &str) -> io::Result<PeerServiceClient> {
        if let Some(c) = self.clients.lock().unwrap_or_else(PoisonError::into_inner).get(addr) {
            return Ok(c.clone());
        }
        let client = common::transport::peer_client(addr).await?;
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Drops the client for `addr` (after a transport failure).
    pub(crate) fn forget(&self, addr: &str) {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).remove(addr);
    }
}
