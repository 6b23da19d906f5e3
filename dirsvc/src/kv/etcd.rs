//! The etcd engine of the kv layer: the layer's keys in an etcd v3 cluster
//! (several dirsvc share one cluster), commits as etcd transactions fenced
//! by a leader election ([`election`]), and the connections to the members.
//!
//! Key space, under the configured prefix `P` (e.g. `/p2pfs/`):
//! - `P k/<key>`: the layer's keys (arbitrary bytes) and values;
//! - `P commit-marker/<instance>`: a random id written by every commit of
//!   one engine instance, to learn the outcome of a commit whose answer was
//!   lost (below);
//! - `P election/<name>`: the leader's advertised address, held by its
//!   lease ([`election::Election`]).
//!
//! Reads: a [`Snapshot`]'s first read is linearizable at the latest
//! revision and pins the revision of its response header; its later reads
//! ask for that revision, so a snapshot is a consistent view (until etcd
//! compacts that revision away: then the read fails with the retryable
//! [`Error::Unavailable`] and the layer reruns the transaction).
//!
//! Commits: one etcd `Txn` whose compares are the fence (the election
//! key's create revision must still be the one this process won with) and
//! "this instance's marker was last written at the revision we know"; its
//! success branch holds the writes and a put of a fresh commit id into the
//! marker. A failed compare on the fence is [`Error::NotLeader`]. When the
//! answer is lost (timeout, broken connection), the engine settles the
//! outcome with a second transaction that moves the marker only if it is
//! still where it was: if that succeeds the lost commit can never apply
//! (its marker compare now fails) and the commit returns the retryable
//! [`Error::Unavailable`]; if the marker holds the lost commit's id, the
//! commit applied and returns `Ok`. If etcd cannot be reached for the
//! whole settling window the commit returns [`Error::Unavailable`] and the
//! engine stays *in doubt*: the next snapshot or commit settles first, and
//! if the doubtful commit turns out to have applied after all, that call
//! fails with [`Error::CommitFailed`] instead of letting a rerun apply the
//! same transaction twice.
//!
//! I/O: the [`Engine`] trait is synchronous and is called from tokio
//! blocking threads, plain threads and tests, so the engine owns a small
//! tokio runtime (one worker thread) that drives the connections; a
//! synchronous call spawns its request there and waits on a std channel
//! (never `block_on`, which panics inside another runtime). Each member has
//! its own HTTP/2 connection (dialed lazily, through our own TLS); requests
//! go to the current member and move on to the next one when it is
//! unreachable or has no leader (`require-leader` requests fail fast).
//!
//! TLS: etcd members present node certificates of the cluster CA (role
//! [`EtcdConfig::server_role`]) and the engine presents its own
//! ([`common::tls`] verifies identities, not host names: our certificates
//! name no host, so tonic's own TLS, which checks names, cannot be used).

pub mod election;

use super::{Batch, Engine, KeyRange, Op, Pair, Snapshot};
use crate::error::Error;
use common::rpc::Role;
use common::tls::{Expect, Tls};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Most operations etcd takes in one branch of a transaction (its default
/// `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Largest request etcd accepts by default (`--max-request-bytes`, 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Largest value the engine accepts, in bytes (1 MiB: under etcd's request
/// limit with room for the keys and the transaction around it).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Most key and value bytes the group committer puts in one commit
/// (1.25 MiB; etcd's request limit less room for encoding overhead).
pub const MAX_BATCH_BYTES: usize = 1280 * 1024;

/// Keys read per request of a scan, and gets per transaction of a
/// [`Snapshot::get_many`].
const PAGE: usize = 128;

/// Largest response the engine decodes, in bytes (a page of large values).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Where the layer's own keys live under the prefix.
const DATA_SUB: &[u8] = b"k/";
/// Where the commit markers live under the prefix.
const MARKER_SUB: &[u8] = b"commit-marker/";
/// Where election keys live under the prefix.
const ELECTION_SUB: &[u8] = b"election/";

/// How to reach and use an etcd cluster.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members: `host:port`, `http://host:port` or
    /// `https://host:port` (the scheme is ignored: [`EtcdConfig::tls`]
    /// decides). At least one.
    pub endpoints: Vec<String>,
    /// Prefix of every key the engine reads or writes (e.g. `/p2pfs/`):
    /// several clusters or tests can share one etcd under different
    /// prefixes.
    pub prefix: Vec<u8>,
    /// This instance's name (letters, digits, `-`): names its commit
    /// marker. Keep it stable across restarts (one marker key per name
    /// stays in etcd); two running engines must not share it.
    pub instance: String,
    /// Mutual TLS with the members: this node's identity (its key,
    /// certificate and the cluster CA; build it from PEM with
    /// `Tls::new(&NodeFiles::from_pem(key, cert, ca)?)`). `None`: plain
    /// TCP (loopback tests only).
    pub tls: Option<Arc<Tls>>,
    /// The role the members' certificates must name (default: dirsvc, the
    /// tier etcd belongs to).
    pub server_role: Role,
    /// How long to wait for a TCP connection and TLS handshake to a member.
    pub dial_timeout: Duration,
    /// How long to wait for the answer to one request before trying the
    /// next member (reads) or settling the outcome (commits).
    pub request_timeout: Duration,
    /// How long a commit whose answer was lost keeps trying to learn its
    /// outcome before it leaves the engine in doubt (see the module
    /// documentation).
    pub settle_window: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("instance", &self.instance)
            .field("tls", &self.tls.is_some())
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// A configuration for `endpoints` under `prefix`, with a random
    /// instance name, no TLS, a 2 s dial timeout, a 5 s request timeout
    /// and a 10 s settling window.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<Vec<u8>>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            instance: random_id(),
            tls: None,
            server_role: Role::Dirsvc,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            settle_window: Duration::from_secs(10),
        }
    }
}

/// What a commit must find in etcd to apply: who may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Commits are not fenced (a single writer by construction: tests, a
    /// one-dirsvc cluster).
    Open,
    /// This process may not write: every commit fails with
    /// [`Error::NotLeader`] without reaching etcd.
    Closed,
    /// Commits apply only while the election key `key` (full etcd key)
    /// still has create revision `revision`: the one this process won.
    Leader {
        /// The election key.
        key: Vec<u8>,
        /// Its create revision when this process won.
        revision: i64,
    },
}

/// One etcd member: its address and a client on its own connection.
pub(crate) struct Member {
    endpoint: String,
    client: Client,
    kv: KvClient,
}

/// The commit side's knowledge of its marker.
struct Writer {
    /// The marker's mod revision as last known (0: absent); `None` until
    /// read once.
    marker_rev: Option<i64>,
    /// A commit id whose outcome is not known yet.
    doubt: Option<String>,
}

/// Why a request failed, as far as its outcome goes.
#[derive(Debug)]
pub(crate) enum Failure {
    /// It did not reach a member that could act on it (no connection, the
    /// member has no leader): nothing happened; another member may answer.
    NotSent(String),
    /// It may or may not have been applied (timeout, connection lost).
    Unknown(String),
    /// It asked for a revision etcd has compacted.
    Compacted(String),
    /// etcd refused it for good (too large, invalid, permission).
    Refused(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::NotSent(m) | Failure::Unknown(m) | Failure::Compacted(m) | Failure::Refused(m) => m,
        }
    }

    fn classify(e: etcd_client::Error) -> Failure {
        use tonic::Code;
        match e {
            etcd_client::Error::GRpcStatus(s) => {
                let msg = format!("{:?}: {}", s.code(), s.message());
                let lower = s.message().to_ascii_lowercase();
                if lower.contains("compacted") {
                    Failure::Compacted(msg)
                } else if lower.contains("no leader")
                    || (s.code() == Code::Unavailable
                        && (lower.contains("error trying to connect")
                            || lower.contains("tcp connect error")
                            || lower.contains("connection refused")
                            || lower.contains("dns error")))
                {
                    // Refused before any byte of the request left (no
                    // connection), or by a member that proposes nothing
                    // without a leader (`require-leader`).
                    Failure::NotSent(msg)
                } else {
                    match s.code() {
                        Code::InvalidArgument
                        | Code::ResourceExhausted
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::FailedPrecondition
                        | Code::OutOfRange
                        | Code::Unimplemented
                        | Code::NotFound
                        | Code::AlreadyExists => Failure::Refused(msg),
                        _ => Failure::Unknown(msg),
                    }
                }
            }
            etcd_client::Error::TransportError(t) => Failure::NotSent(format!("transport: {t}")),
            etcd_client::Error::IoError(io) => Failure::Unknown(format!("I/O: {io}")),
            etcd_client::Error::InvalidArgs(m) => Failure::Refused(m),
            other => Failure::Unknown(other.to_string()),
        }
    }
}

fn unavailable(f: &Failure) -> Error {
    Error::Unavailable(format!("etcd: {}", f.message()))
}

/// The state shared by the engine, its snapshots, its election and their
/// background tasks.
pub(crate) struct Inner {
    members: Vec<Member>,
    current: AtomicUsize,
    prefix: Vec<u8>,
    data_prefix: Vec<u8>,
    marker_key: Vec<u8>,
    request_timeout: Duration,
    settle_window: Duration,
    fence: RwLock<Fence>,
    writer: tokio::sync::Mutex<Writer>,
    in_doubt: AtomicBool,
    handle: tokio::runtime::Handle,
}

impl Inner {
    /// The member requests go to now, and its index.
    fn member(&self) -> (usize, &Member) {
        let i = self.current.load(Ordering::Relaxed) % self.members.len();
        (i, &self.members[i])
    }

    /// Moves on from member `from` (unless another request already did).
    fn rotate(&self, from: usize) {
        let next = (from + 1) % self.members.len();
        if self.current.compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            debug!(from = %self.members[from].endpoint, to = %self.members[next].endpoint, "etcd: trying another member");
        }
    }

    /// One request to the current member, bounded by the request timeout.
    async fn once<T, Fut>(&self, f: impl FnOnce(&Member) -> Fut) -> (usize, Result<T, Failure>)
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (i, m) = self.member();
        let r = match tokio::time::timeout(self.request_timeout, f(m)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::classify(e)),
            Err(_) => Err(Failure::Unknown(format!(
                "no answer from {} within {:?}",
                m.endpoint, self.request_timeout
            ))),
        };
        (i, r)
    }

    /// An idempotent request (a read, a lease call): tried on each member
    /// in turn until one answers.
    pub(crate) async fn call<T, Fut>(&self, mut f: impl FnMut(&Member) -> Fut) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = Failure::NotSent("no etcd member".into());
        for _ in 0..self.members.len() {
            let (i, r) = self.once(&mut f).await;
            match r {
                Ok(v) => return Ok(v),
                Err(f @ (Failure::Compacted(_) | Failure::Refused(_))) => return Err(f),
                Err(f) => {
                    self.rotate(i);
                    last = f;
                }
            }
        }
        Err(last)
    }

    /// Runs `fut` on the engine's runtime and waits for it from any
    /// thread (a plain one, a tokio blocking one, a test's).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| Err(Error::Unavailable("the etcd engine is shut down".into())))
    }

    fn data_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.data_prefix.len() + key.len());
        k.extend_from_slice(&self.data_prefix);
        k.extend_from_slice(key);
        k
    }

    /// The full key of election `name`.
    pub(crate) fn election_key(&self, name: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(ELECTION_SUB);
        k.extend_from_slice(name.as_bytes());
        k
    }

    pub(crate) fn set_fence(&self, fence: Fence) {
        *self.fence.write().unwrap_or_else(PoisonError::into_inner) = fence;
    }

    fn fence(&self) -> Fence {
        self.fence.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The marker's current value and mod revision (0 if absent),
    /// linearizable.
    async fn read_marker(&self) -> Result<(Option<Vec<u8>>, i64), Failure> {
        let key = self.marker_key.clone();
        let mut resp = self.call(|m| kv_get(m, key.clone(), None)).await?;
        Ok(match resp.take_kvs().into_iter().next() {
            Some(kv) => {
                let rev = kv.mod_revision();
                (Some(kv.into_key_value().1), rev)
            }
            None => (None, 0),
        })
    }

    /// Learns the outcome of commit `id`, whose answer was lost: moves the
    /// marker if it is where the lost commit expected it (which makes the
    /// lost commit fail forever), else reads who moved it.
    async fn settle(&self, w: &mut Writer, id: &str) -> Settled {
        let deadline = Instant::now() + self.settle_window;
        let mut bumps: Vec<String> = Vec::new();
        loop {
            let Some(expected) = w.marker_rev else {
                // Never read (the first commit's answer was lost): the
                // marker cannot be pinned, only read.
                match self.read_marker().await {
                    Ok((Some(v), rev)) if v == id.as_bytes() => {
                        w.marker_rev = Some(rev);
                        return Settled::Applied;
                    }
                    Ok((_, rev)) => w.marker_rev = Some(rev),
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(f) => return Settled::Unknown(f.message().to_string()),
                }
                continue;
            };
            let bump = random_id();
            bumps.push(bump.clone());
            let txn = Txn::new()
                .when([Compare::mod_revision(self.marker_key.clone(), CompareOp::Equal, expected)])
                .and_then([TxnOp::put(self.marker_key.clone(), bump, None)])
                .or_else([TxnOp::get(self.marker_key.clone(), None)]);
            let (i, r) = self.once(|m| kv_txn(m, txn)).await;
            match r {
                Ok(resp) if resp.succeeded() => {
                    w.marker_rev = resp.header().map(|h| h.revision());
                    return Settled::NotApplied;
                }
                Ok(resp) => {
                    let (value, rev) = first_get(&resp);
                    w.marker_rev = Some(rev);
                    let value = value.unwrap_or_default();
                    if value == id.as_bytes() {
                        return Settled::Applied;
                    }
                    if bumps.iter().any(|b| b.as_bytes() == value.as_slice()) {
                        return Settled::NotApplied;
                    }
                    return Settled::Foreign;
                }
                Err(f) => {
                    self.rotate(i);
                    if Instant::now() >= deadline {
                        return Settled::Unknown(f.message().to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Makes sure the marker's revision is known and no commit is in
    /// doubt, before a commit or a snapshot.
    async fn settle_doubt(&self, w: &mut Writer) -> Result<(), Error> {
        if let Some(id) = w.doubt.clone() {
            match self.settle(w, &id).await {
                Settled::NotApplied => {
                    w.doubt = None;
                    self.in_doubt.store(false, Ordering::SeqCst);
                }
                Settled::Applied => {
                    w.doubt = None;
                    self.in_doubt.store(false, Ordering::SeqCst);
                    warn!(commit = %id, "etcd: a commit reported as unavailable was applied after all");
                    return Err(Error::CommitFailed(format!(
                        "etcd commit {id} was reported unavailable but applied after all; not rerunning it"
                    )));
                }
                Settled::Foreign => {
                    w.doubt = None;
                    self.in_doubt.store(false, Ordering::SeqCst);
                    return Err(foreign_marker());
                }
                Settled::Unknown(m) => {
                    return Err(Error::Unavailable(format!("etcd: an earlier commit is still in doubt: {m}")))
                }
            }
        }
        if w.marker_rev.is_none() {
            let (_, rev) = self.read_marker().await.map_err(|f| unavailable(&f))?;
            w.marker_rev = Some(rev);
        }
        Ok(())
    }

    async fn commit(self: Arc<Self>, batch: Vec<(Vec<u8>, Op)>) -> Result<(), Error> {
        let mut w = self.writer.lock().await;
        let fence = self.fence();
        if fence == Fence::Closed {
            return Err(Error::NotLeader("this process does not hold the etcd election".into()));
        }
        self.settle_doubt(&mut w).await?;
        let Some(marker_rev) = w.marker_rev else {
            return Err(Error::Unavailable("etcd: commit marker unknown".into()));
        };
        let mut compares = vec![Compare::mod_revision(self.marker_key.clone(), CompareOp::Equal, marker_rev)];
        let mut on_failure = vec![TxnOp::get(self.marker_key.clone(), None)];
        if let Fence::Leader { key, revision } = &fence {
            compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, *revision));
            on_failure.push(TxnOp::get(key.clone(), None));
        }
        let id = random_id();
        let mut ops: Vec<TxnOp> = batch
            .into_iter()
            .map(|(k, op)| match op {
                Op::Put(v) => TxnOp::put(self.data_key(&k), v, None),
                Op::Delete => TxnOp::delete(self.data_key(&k), None),
            })
            .collect();
        ops.push(TxnOp::put(self.marker_key.clone(), id.clone(), None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(on_failure);
        let mut last = String::from("no etcd member");
        for _ in 0..self.members.len() {
            let t = txn.clone();
            let (i, r) = self.once(|m| kv_txn(m, t)).await;
            match r {
                Ok(resp) => return self.judge(&mut w, &resp, &fence, &id),
                Err(Failure::NotSent(m)) => {
                    self.rotate(i);
                    last = m;
                }
                Err(Failure::Refused(m)) => {
                    return Err(Error::CommitFailed(format!("etcd refused the commit: {m}")))
                }
                Err(f @ (Failure::Unknown(_) | Failure::Compacted(_))) => {
                    self.rotate(i);
                    debug!(commit = %id, error = %f.message(), "etcd: commit outcome unknown; settling it");
                    return match self.settle(&mut w, &id).await {
                        Settled::Applied => Ok(()),
                        Settled::NotApplied => Err(unavailable(&f)),
                        Settled::Foreign => Err(foreign_marker()),
                        Settled::Unknown(m) => {
                            w.doubt = Some(id.clone());
                            self.in_doubt.store(true, Ordering::SeqCst);
                            warn!(commit = %id, error = %m, "etcd: commit outcome unknown; in doubt until etcd answers");
                            Err(Error::Unavailable(format!("etcd: commit outcome unknown: {m}")))
                        }
                    };
                }
            }
        }
        Err(Error::Unavailable(format!("etcd: no member took the commit: {last}")))
    }

    /// The outcome of a commit transaction that etcd answered.
    fn judge(&self, w: &mut Writer, resp: &TxnResponse, fence: &Fence, id: &str) -> Result<(), Error> {
        if resp.succeeded() {
            w.marker_rev = resp.header().map(|h| h.revision());
            return Ok(());
        }
        let gets: Vec<Option<etcd_client::KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            })
            .collect();
        let marker = gets.first().and_then(|kv| kv.as_ref());
        let marker_rev = marker.map_or(0, |kv| kv.mod_revision());
        if marker.is_some_and(|kv| kv.value() == id.as_bytes()) {
            // An earlier attempt of this very commit applied (its answer
            // was lost on the way to another member).
            w.marker_rev = Some(marker_rev);
            return Ok(());
        }
        if let Fence::Leader { revision, .. } = fence {
            let now = gets.get(1).and_then(|kv| kv.as_ref()).map_or(0, |kv| kv.create_revision());
            if now != *revision {
                return Err(Error::NotLeader(format!(
                    "the etcd election key was created at revision {now}, this process won at {revision}"
                )));
            }
        }
        // Only the marker moved: a commit of ours applied late, or another
        // engine uses the same instance name.
        warn!(expected = ?w.marker_rev, found = marker_rev, "etcd: this instance's commit marker moved");
        w.marker_rev = Some(marker_rev);
        Err(Error::Unavailable("etcd: the commit marker moved; retrying".into()))
    }

    /// Reads at the snapshot's revision (pinning it on the first read).
    async fn get_many(&self, rev: &AtomicI64, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let at = rev.load(Ordering::SeqCst);
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(self.data_key(k), Some(GetOptions::new().with_revision(at))))
                .collect();
            let txn = Txn::new().and_then(ops);
            let resp = self.call(|m| kv_txn(m, txn.clone())).await.map_err(|f| unavailable(&f))?;
            pin(rev, resp.header().map(|h| h.revision()));
            for r in resp.op_responses() {
                out.push(match r {
                    TxnOpResponse::Get(mut g) => {
                        g.take_kvs().into_iter().next().map(|kv| kv.into_key_value().1)
                    }
                    _ => None,
                });
            }
        }
        if out.len() != keys.len() {
            return Err(Error::Unavailable("etcd: a short transaction answer".into()));
        }
        Ok(out)
    }

    async fn scan(
        &self,
        rev: &AtomicI64,
        range: KeyRange,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Pair>, Error> {
        let mut start = match &range.0 {
            Bound::Included(k) => self.data_key(k),
            Bound::Excluded(k) => {
                let mut s = self.data_key(k);
                s.push(0);
                s
            }
            Bound::Unbounded => self.data_prefix.clone(),
        };
        let mut end = match &range.1 {
            Bound::Included(k) => {
                let mut e = self.data_key(k);
                e.push(0);
                e
            }
            Bound::Excluded(k) => self.data_key(k),
            Bound::Unbounded => super::prefix_end(&self.data_prefix).unwrap_or_else(|| vec![0]),
        };
        let mut out = Vec::new();
        while out.len() < limit && start < end {
            let want = (limit - out.len()).min(PAGE);
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want as i64)
                .with_revision(rev.load(Ordering::SeqCst));
            if reverse {
                opts = opts.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            let key = start.clone();
            let mut resp = self
                .call(|m| kv_get(m, key.clone(), Some(opts.clone())))
                .await
                .map_err(|f| unavailable(&f))?;
            pin(rev, resp.header().map(|h| h.revision()));
            let more = resp.more();
            let kvs = resp.take_kvs();
            let n = kvs.len();
            for kv in kvs {
                let (k, v) = kv.into_key_value();
                if reverse {
                    end = k.clone();
                } else {
                    start = k.clone();
                    start.push(0);
                }
                out.push((k[self.data_prefix.len().min(k.len())..].to_vec(), v));
            }
            if n < want || !more {
                break;
            }
        }
        Ok(out)
    }
}

/// A get on member `m`, as a future that owns what it needs.
fn kv_get(
    m: &Member,
    key: Vec<u8>,
    opts: Option<GetOptions>,
) -> impl Future<Output = Result<etcd_client::GetResponse, etcd_client::Error>> + Send + 'static {
    let mut kv = m.kv.clone();
    async move { kv.get(key, opts).await }
}

/// A transaction on member `m`, as a future that owns what it needs.
fn kv_txn(
    m: &Member,
    txn: Txn,
) -> impl Future<Output = Result<TxnResponse, etcd_client::Error>> + Send + 'static {
    let mut kv = m.kv.clone();
    async move { kv.txn(txn).await }
}

/// Pins a snapshot's revision to the first answer's.
fn pin(rev: &AtomicI64, header: Option<i64>) {
    if let Some(h) = header {
        let _ = rev.compare_exchange(0, h, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// The first get of a transaction answer: (value, mod revision; 0 if
/// absent).
fn first_get(resp: &TxnResponse) -> (Option<Vec<u8>>, i64) {
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(mut g) = r {
            return match g.take_kvs().into_iter().next() {
                Some(kv) => {
                    let rev = kv.mod_revision();
                    (Some(kv.into_key_value().1), rev)
                }
                None => (None, 0),
            };
        }
    }
    (None, 0)
}

fn foreign_marker() -> Error {
    Error::CommitFailed(
        "another engine writes this instance's commit marker (two dirsvc with one instance name?)".into(),
    )
}

/// How a commit whose answer was lost ended.
enum Settled {
    Applied,
    NotApplied,
    /// Someone else wrote the marker.
    Foreign,
    /// etcd could not be asked within the settling window.
    Unknown(String),
}

/// A fresh random id, 32 hex digits.
fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The etcd engine. Cheap to share behind an `Arc`; see the module
/// documentation.
pub struct EtcdEngine {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EtcdEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.inner.members.iter().map(|m| m.endpoint.as_str()).collect();
        f.debug_struct("EtcdEngine").field("endpoints", &endpoints).finish_non_exhaustive()
    }
}

impl Drop for EtcdEngine {
    fn drop(&mut self) {
        // Not `Runtime::drop`, which blocks and panics inside async code.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl EtcdEngine {
    /// An engine for `config`. Connections are made lazily: this does not
    /// wait for etcd (the first read or commit does). Commits are not
    /// fenced until an [`election::Election`] is made ([`Fence::Open`]).
    ///
    /// Errors: [`Error::Io`] for an empty endpoint list, an endpoint that
    /// does not parse, an unusable instance name, or a runtime that cannot
    /// start; [`Error::Tls`] if the TLS identity is unusable.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdEngine, Error> {
        let bad = |m: String| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
        if config.endpoints.is_empty() {
            return Err(bad("no etcd endpoints".into()));
        }
        if config.instance.is_empty()
            || !config.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!("bad etcd instance name {:?}", config.instance)));
        }
        let tls = match &config.tls {
            Some(t) => {
                let c = t
                    .client_config(Expect::Role(config.server_role))
                    .map_err(|e| Error::Tls(e.to_string()))?;
                let mut c = (*c).clone();
                // etcd's gRPC is HTTP/2, negotiated by ALPN.
                c.alpn_protocols = vec![b"h2".to_vec()];
                Some(tokio_rustls::TlsConnector::from(Arc::new(c)))
            }
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-io")
            .enable_all()
            .build()?;
        let mut members = Vec::new();
        for e in &config.endpoints {
            let addr = e.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|err| bad(format!("etcd endpoint {e:?}: {err}")))?
                .http2_keep_alive_interval(config.request_timeout)
                .keep_alive_timeout(config.request_timeout)
                .keep_alive_while_idle(true);
            let connector =
                Connector { addr: addr.to_string(), tls: tls.clone(), dial_timeout: config.dial_timeout };
            let options = ConnectOptions::new().with_require_leader(true);
            // Made on the engine's runtime (the channel spawns its worker
            // there), waited for without `block_on` (see the module docs).
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let channel = endpoint.connect_with_connector_lazy(connector);
                let _ =
                    tx.send(Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)).await);
            });
            let client = rx
                .recv()
                .map_err(|_| bad("the etcd engine's runtime stopped".into()))?
                .map_err(|err| bad(format!("etcd endpoint {e:?}: {err}")))?;
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .max_encoding_message_size(MAX_REQUEST_BYTES * 4);
            members.push(Member { endpoint: addr.to_string(), client, kv });
        }
        let mut marker_key = config.prefix.clone();
        marker_key.extend_from_slice(MARKER_SUB);
        marker_key.extend_from_slice(config.instance.as_bytes());
        let mut data_prefix = config.prefix.clone();
        data_prefix.extend_from_slice(DATA_SUB);
        let inner = Arc::new(Inner {
            members,
            current: AtomicUsize::new(0),
            prefix: config.prefix.clone(),
            data_prefix,
            marker_key,
            request_timeout: config.request_timeout,
            settle_window: config.settle_window,
            fence: RwLock::new(Fence::Open),
            writer: tokio::sync::Mutex::new(Writer { marker_rev: None, doubt: None }),
            in_doubt: AtomicBool::new(false),
            handle: runtime.handle().clone(),
        });
        Ok(EtcdEngine { inner, runtime: Some(runtime) })
    }

    /// What commits must find in etcd now.
    pub fn fence(&self) -> Fence {
        self.inner.fence()
    }

    /// Sets what commits must find in etcd ([`election::Election`] does
    /// this when it wins or loses; tests use it to act as a deposed
    /// leader that has not noticed yet).
    pub fn set_fence(&self, fence: Fence) {
        self.inner.set_fence(fence);
    }

    /// The full etcd key of election `name` under this engine's prefix.
    pub fn election_key(&self, name: &str) -> Vec<u8> {
        self.inner.election_key(name)
    }

    /// The leader election `name` on this engine's cluster, this process
    /// advertising `address` (where followers redirect clients), with a
    /// lease of `ttl` (whole seconds, at least 1). Closes the fence
    /// ([`Fence::Closed`]): this engine commits only once
    /// [`election::Election::campaign`] has won.
    pub fn election(&self, name: &str, address: impl Into<String>, ttl: Duration) -> election::Election {
        election::Election::new(self.inner.clone(), name, address.into(), ttl)
    }

    /// The value of election `name`'s key (the leader's advertised
    /// address) if a leader holds it now, else `None` (`dirsvc migrate`
    /// refuses a prefix in use).
    ///
    /// Errors: [`Error::Unavailable`] if no member answers.
    pub fn election_holder(&self, name: &str) -> Result<Option<String>, Error> {
        let key = self.inner.election_key(name);
        let inner = self.inner.clone();
        self.inner.block(async move {
            let mut resp = inner.call(|m| kv_get(m, key.clone(), None)).await.map_err(|f| unavailable(&f))?;
            Ok(resp.take_kvs().into_iter().next().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    /// Whether a commit's outcome is still unknown (see the module
    /// documentation).
    pub fn in_doubt(&self) -> bool {
        self.inner.in_doubt.load(Ordering::SeqCst)
    }
}

/// A snapshot: the revision its first read pinned (0 before that).
struct EtcdSnapshot {
    inner: Arc<Inner>,
    rev: Arc<AtomicI64>,
}

impl Snapshot for EtcdSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_many(&[key.to_vec()])?.into_iter().next().flatten())
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (inner, rev, keys) = (self.inner.clone(), self.rev.clone(), keys.to_vec());
        self.inner.block(async move { inner.get_many(&rev, keys).await })
    }

    fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> Result<Vec<Pair>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (inner, rev, range) = (self.inner.clone(), self.rev.clone(), range.clone());
        self.inner.block(async move { inner.scan(&rev, range, limit, reverse).await })
    }
}

impl Engine for EtcdEngine {
    fn name(&self) -> &'static str {
        "etcd"
    }

    /// etcd's `--max-txn-ops` less the marker put.
    fn max_ops(&self) -> usize {
        MAX_TXN_OPS - 1
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, Error> {
        if self.inner.in_doubt.load(Ordering::SeqCst) {
            let inner = self.inner.clone();
            self.inner.block(async move {
                let mut w = inner.writer.lock().await;
                inner.settle_doubt(&mut w).await
            })?;
        }
        Ok(Box::new(EtcdSnapshot { inner: self.inner.clone(), rev: Arc::new(AtomicI64::new(0)) }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        if batch.len() > self.max_ops() {
            return Err(Error::TooLarge { ops: batch.len(), max: self.max_ops() });
        }
        if let Some((k, _)) =
            batch.iter().find(|(_, op)| matches!(op, Op::Put(v) if v.len() > MAX_VALUE_BYTES))
        {
            return Err(Error::CommitFailed(format!(
                "a value of {} bytes is over the etcd engine's {MAX_VALUE_BYTES}",
                batch.get(k).map_or(0, |op| if let Op::Put(v) = op { v.len() } else { 0 })
            )));
        }
        let batch: Vec<(Vec<u8>, Op)> = batch.iter().map(|(k, op)| (k.clone(), op.clone())).collect();
        let inner = self.inner.clone();
        self.inner.block(inner.commit(batch))
    }
}

/// Dials one member: TCP (no Nagle), then our TLS if configured.
#[derive(Clone)]
struct Connector {
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    dial_timeout: Duration,
}

/// A byte stream to a member.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Dialed = hyper_util::rt::TokioIo<Box<dyn Io>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Dialed, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timed_out = || {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect to {} timed out", this.addr),
                )
            };
            let tcp = tokio::time::timeout(this.dial_timeout, tokio::net::TcpStream::connect(&this.addr))
                .await
                .map_err(|_| timed_out())??;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match &this.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(common::tls::SERVER_NAME)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let stream = tokio::time::timeout(this.dial_timeout, tls.connect(name, tcp))
                        .await
                        .map_err(|_| timed_out())??;
                    Box::new(stream)
                }
            };
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    }
}
