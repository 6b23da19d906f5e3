//! The `DirService` RPC handlers: argument checks, the call to the store
//! (one short transaction, `Shared::short`), the peer mirror, and the
//! one place where errors are logged and turned into `DirError`s. What a
//! mutation does to the store and the change feed is in [`mutations`].

mod mutations;

use mutations::{apply, check_held, commit_limit, ino_change};

use crate::error::{invalid, Error};
use crate::leader::{Leadership, Term};
use crate::limits::Principal;
use crate::peers::{PeerTable, PlacementCaps};
use crate::shared::{Shared, SurveyFigures};
use crate::store::tables::JoinTokenRecord;
use crate::store::{RequestKey, Store};
use crate::survey::survey;
use crate::DirsvcConfig;
use common::rpc::dir::{
    Attr, BlockLoc, ChangeBatch, ClusterStatus, CommitLayout, DirError, DirService, KeyEpoch, Keyring,
    LayoutPage, Lock, LockConflict, LockFlavor, Member, NewInode, NewSymlink, PeerRegistration, PeerStatus,
    PeerUsage, ReadDirPage, ReadDirPlusPage, Reseal, SessionGrant, SessionId, SessionOpen, SetAttr, StatFs,
    VolumeInfo,
};
use common::rpc::dir::{DirsvcStatus, HeartbeatReply, JoinGrant, Mutated, Mutation, Renewal, RevocationList};
use common::rpc::{PeerLoc, Role, PROTOCOL_VERSION};
use common::time::Timestamp;
use common::tls::{Caller, Tls};
use common::transport::Connections;
use common::{ChunkId, InodeId, NodeId, PeerId};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;
use tarpc::context::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

/// An index of more than this many chunks is "big" for `cluster_status`:
/// it then reports the repair worker's last survey while that is younger
/// than [`STATUS_SURVEY_MAX_AGE`], even if something changed since.
pub const STATUS_BIG_INDEX: u64 = 100_000;

/// Oldest survey `cluster_status` reports on a big index.
pub const STATUS_SURVEY_MAX_AGE: Duration = Duration::from_secs(30);

/// Most chunks one `placement` call may ask for.
pub const MAX_PLACEMENT_COUNT: u32 = 4096;

/// Most chunk ids one `chunk_locations` call may ask about.
pub const MAX_LOCATION_QUERY: usize = 65536;

/// Longest peer address accepted at registration, in bytes.
pub const MAX_PEER_ADDR: usize = 256;

/// Longest host or zone label accepted at registration, in bytes.
pub const MAX_LABEL: usize = 256;

/// A waiting call (`set_lock`, `poll_changes`) answers at least this long
/// before the caller's deadline, so its answer (`WouldBlock`, or no
/// changes) arrives instead of a deadline error.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

/// How long a call may wait: `wait_ms`, cut to end [`DEADLINE_MARGIN`]
/// before the caller's deadline (the cap of each call applies after).
fn wait_within(ctx: &Context, wait_ms: u32) -> Duration {
    let left =
        ctx.deadline.saturating_duration_since(std::time::Instant::now()).saturating_sub(DEADLINE_MARGIN);
    Duration::from_millis(u64::from(wait_ms)).min(left)
}

/// Roles that use the volume: clients and admins.
const MEMBERS: &[Role] = &[Role::Client, Role::Admin];

/// Admins only.
const ADMINS: &[Role] = &[Role::Admin];

/// Every role.
const ANY: &[Role] = &[Role::Dirsvc, Role::Peer, Role::Client, Role::Admin];

/// Largest certificate signing request `join` reads, in bytes.
pub const MAX_CSR_BYTES: usize = 16 << 10;

/// Longest revocation reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// A token id in hex, for logs (never the secret).
fn hex_id(id: &[u8; 8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory service: a cheap-to-clone handle implementing
/// [`DirService`] over a [`Store`], the in-memory peer mirror and the
/// counters the background workers share. One per connection
/// ([`DirServer::for_connection`]), carrying the caller its certificate
/// names; every call is authorized from it.
#[derive(Clone, Debug)]
pub struct DirServer {
    shared: Arc<Shared>,
    /// Who speaks on this connection (`None`: no certificate, a joining
    /// node).
    caller: Option<Caller>,
    /// Shortcut to `shared.store`.
    store: Arc<Store>,
    /// The session last named on this connection (by `open_session`,
    /// `renew_session`, `open_file` or `poll_changes`): the origin of the
    /// changes this connection's mutations record, so that session's own
    /// change-feed polls skip them. One per connection
    /// ([`DirServer::for_connection`]).
    connection: Arc<std::sync::Mutex<Option<SessionId>>>,
}

impl DirServer {
    /// The server of the only dirsvc of a volume (an endless term, see
    /// [`crate::leader::Sole`]) over `store`, loading the peer registry
    /// from it. Blocking (read transactions).
    ///
    /// Errors: as [`Store::peers`].
    pub fn new(store: Arc<Store>, config: &DirsvcConfig, tls: Arc<Tls>) -> Result<Self, Error> {
        let conns = Arc::new(Connections::new(tls.revocations().clone()));
        let sole: Arc<dyn Leadership> = Arc::new(crate::leader::Sole::default());
        let term = Term { ended: CancellationToken::new() };
        DirServer::for_term(store, config, tls, conns, term, sole)
    }

    /// The server of one term of leadership (`term`; an already ended term
    /// makes a follower's server, which answers every call but `hello`
    /// with `NotLeader`), loading the peer registry, sessions and
    /// revocations from `store` as at a start. `conns` is the registry of
    /// the listener's connections. Blocking (read transactions).
    ///
    /// Errors: as [`Store::peers`].
    pub fn for_term(
        store: Arc<Store>,
        config: &DirsvcConfig,
        tls: Arc<Tls>,
        conns: Arc<Connections>,
        term: Term,
        leadership: Arc<dyn Leadership>,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared::new(store.clone(), config, tls, conns, term, leadership)?);
        let (version, revoked) = store.revocations()?;
        shared.tls.revocations().replace(version, revoked);
        Ok(DirServer { shared, store, caller: None, connection: Arc::default() })
    }

    /// A handle for one new connection from `caller`: the same service,
    /// with its own caller and record of which session speaks on it.
    pub fn for_connection(&self, caller: Option<Caller>) -> Self {
        DirServer { caller, connection: Arc::default(), ..self.clone() }
    }

    /// The caller, if its certificate's role is one of `roles`.
    ///
    /// Errors: `Unauthorized`, also without a certificate.
    fn allow(&self, op: &'static str, roles: &[Role]) -> Result<&Caller, DirError> {
        self.leading()?;
        match &self.caller {
            Some(c) if roles.contains(&c.role) => Ok(c),
            Some(c) => {
                warn!(op, caller = ?c, "call refused: not allowed for this role");
                Err(DirError::Unauthorized(format!("{op} is not allowed for a {} certificate", c.role)))
            }
            None => {
                warn!(op, "call refused: no certificate");
                Err(DirError::Unauthorized(format!("{op} needs a certificate of the cluster")))
            }
        }
    }

    /// Ok while this server's term of leadership lasts.
    ///
    /// Errors: `NotLeader` with the leader's address as last seen.
    fn leading(&self) -> Result<(), DirError> {
        if self.shared.term.ended.is_cancelled() {
            return Err(DirError::NotLeader { leader: self.shared.leadership.leader() });
        }
        Ok(())
    }

    /// The caller, if it is a client or an admin.
    fn member(&self, op: &'static str) -> Result<&Caller, DirError> {
        self.allow(op, MEMBERS)
    }

    /// Ok if the caller is a member and `session` is not another node's
    /// (see `Sessions::check_owner`: whether it is alive is the call's own
    /// business).
    ///
    /// Errors: `Unauthorized`.
    fn session_owner(&self, op: &'static str, session: SessionId) -> Result<(), DirError> {
        let node = self.member(op)?.node;
        self.shared.sessions.check_owner(session, node).map_err(|e| {
            if let Error::Dir(DirError::Unauthorized(_)) = &e {
                warn!(op, %session, caller = ?self.caller, "call refused: another node's session");
            }
            DirError::from(e)
        })
    }

    /// Ok if the caller is the peer `id` (a peer speaks only for itself).
    ///
    /// Errors: `Unauthorized`.
    fn the_peer(&self, op: &'static str, id: PeerId) -> Result<(), DirError> {
        let c = self.allow(op, &[Role::Peer])?;
        if PeerId::from(c.node) != id {
            warn!(op, caller = ?c, claimed = %id, "call refused: a peer spoke for another");
            return Err(DirError::Unauthorized(format!("{op}: a peer may only speak for itself")));
        }
        Ok(())
    }

    /// Who this connection's calls count against ([`crate::limits`]).
    fn principal(&self) -> Principal {
        self.caller.as_ref().map_or_else(Principal::anonymous, |c| Principal::node(c.node))
    }

    /// The version of the revocation list this dirsvc enforces.
    fn revocation_version(&self) -> u64 {
        self.shared.tls.revocations().version()
    }

    /// Notes that `session` speaks on this connection.
    fn bind(&self, session: SessionId) {
        *self.connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(session);
    }

    /// The session speaking on this connection, if it named one.
    fn origin(&self) -> Option<SessionId> {
        *self.connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store this server writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The state the background workers share with the handlers.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.shared.peers()
    }

    /// A layout page as sent: each block's replicas as peer locations.
    fn layout_page(&self, page: crate::store::LayoutBlocks) -> LayoutPage {
        let peers = self.peers();
        LayoutPage {
            attr: page.attr,
            blocks: page
                .blocks
                .into_iter()
                .map(|b| BlockLoc {
                    index: b.index,
                    chunk: b.chunk,
                    len: b.len,
                    replicas: peers.locs(&b.replicas),
                    epoch: b.epoch,
                    mac: b.mac,
                    inline: b.inline,
                })
                .collect(),
            eof: page.eof,
        }
    }

    /// Runs `f`, one short store transaction, with the store
    /// ([`Shared::short`]: on this thread with redb).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared.short(move |sh| f(&sh.store)).await
    }

    /// Runs `f`, short, with the shared state (store, sessions, change
    /// feed), as [`DirServer::blocking`]. Mutations record their changes
    /// inside `f`, right after the commit, so a cancelled request loses
    /// none.
    async fn with_shared<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared.short(f).await
    }
}

impl DirServer {
    /// Serves one [`Mutation`], once per request id `request` if given
    /// (see `DirService::mutate`; the id is keyed by the caller's node id).
    async fn apply(&self, request: Option<u64>, op: Mutation) -> Result<Mutated, DirError> {
        let name = op.op();
        let caller = match &op {
            Mutation::Symlink { session, .. } | Mutation::CreateOpen { session, .. } => {
                self.session_owner(name, *session)?;
                self.member(name)?
            }
            _ => self.member(name)?,
        };
        let req = request.map(|id| RequestKey { node: caller.node, id });
        let origin = self.origin();
        let r = self.with_shared(move |sh| apply(sh, origin, req, op)).await;
        reply(name, r)
    }
}

/// Turns a library result into the wire result, logging what the caller
/// cannot act on (internal errors) once, here.
fn reply<T>(op: &'static str, r: Result<T, Error>) -> Result<T, DirError> {
    match r {
        Ok(v) => Ok(v),
        Err(Error::Dir(e)) => {
            debug!(op, error = %e, "request refused");
            Err(e)
        }
        Err(e @ (Error::NotLeader(_) | Error::Unavailable(_))) => {
            warn!(op, error = %e, "request not served");
            Err(e.into())
        }
        Err(e) => {
            error!(op, error = %e, "request failed");
            Err(e.into())
        }
    }
}

impl DirService for DirServer {
    async fn hello(self, _: Context) -> u32 {
        PROTOCOL_VERSION
    }

    #[instrument(skip_all, fields(token = %hex_id(&token_id)))]
    async fn join(
        self,
        _: Context,
        token_id: [u8; 8],
        secret: [u8; 16],
        wanted: Role,
        csr: Vec<u8>,
    ) -> Result<JoinGrant, DirError> {
        let r = async {
            self.leading()?;
            self.shared.joins.acquire(1).await;
            let ca = self.shared.ca.clone().ok_or_else(|| {
                DirError::Unauthorized("this dirsvc holds no CA; ask an operator for a certificate".into())
            })?;
            if csr.len() > MAX_CSR_BYTES {
                return Err(invalid("certificate signing request too large"));
            }
            let token = common::pki::JoinToken { ca: ca.fingerprint(), id: token_id, secret };
            let hash = token.secret_hash();
            // Which role the certificate gets is the token's; the node id is
            // the request key's. The request is checked in full first
            // (signature, Ed25519 key), so a token is never spent on a
            // request that cannot get a certificate; then the token is
            // checked and spent in one transaction, then the certificate
            // issued (no state).
            let node = common::pki::csr_node(&csr).map_err(|e| invalid(format!("{e}")))?;
            let role = self.blocking(move |s| s.use_join_token(token_id, &hash, wanted, node)).await?;
            let (node, cert_pem) = ca
                .issue_for_csr(&csr, role, common::pki::NODE_CERT_VALIDITY)
                .map_err(|e| invalid(format!("{e}")))?;
            info!(node = %node, %role, "node joined with a token");
            Ok(JoinGrant { cert_pem, ca_pem: ca.cert_pem().to_string() })
        }
        .await;
        reply("join", r)
    }

    #[instrument(skip_all)]
    async fn renew_certificate(self, _: Context) -> Result<String, DirError> {
        let caller = self.allow("renew_certificate", ANY)?.clone();
        let r = (|| {
            let ca = self.shared.ca.clone().ok_or_else(|| {
                DirError::Unauthorized("this dirsvc holds no CA; renew with the operator".into())
            })?;
            let (node, pem) = ca
                .renew(&caller.cert, common::pki::NODE_CERT_VALIDITY)
                .map_err(|e| invalid(format!("{e}")))?;
            info!(%node, role = %caller.role, "certificate renewed");
            Ok(pem)
        })();
        reply("renew_certificate", r)
    }

    #[instrument(skip_all, fields(%role, ttl_secs))]
    async fn create_join_token(self, _: Context, role: Role, ttl_secs: u64) -> Result<String, DirError> {
        self.allow("create_join_token", ADMINS)?;
        let r = async {
            let ca = self.shared.ca.clone().ok_or_else(|| {
                DirError::Unauthorized("this dirsvc holds no CA, so it cannot admit nodes".into())
            })?;
            if !matches!(role, Role::Peer | Role::Client) {
                return Err(invalid("join tokens grant the peer or client role only"));
            }
            let ttl = Duration::from_secs(ttl_secs);
            if ttl.is_zero() || ttl > common::pki::MAX_TOKEN_TTL {
                return Err(invalid(format!(
                    "a token lives between 1 s and {} s",
                    common::pki::MAX_TOKEN_TTL.as_secs()
                )));
            }
            let token = common::pki::JoinToken::generate(ca.fingerprint());
            let rec = JoinTokenRecord {
                secret_hash: token.secret_hash(),
                role: Store::role_byte(role),
                expires_at: Timestamp::now().secs.saturating_add(ttl_secs as i64),
                used: None,
            };
            let id = token.id;
            self.blocking(move |s| s.add_join_token(id, &rec)).await?;
            info!(token = %hex_id(&id), "join token made");
            Ok(token.to_text().to_string())
        }
        .await;
        reply("create_join_token", r)
    }

    #[instrument(skip_all, fields(%node))]
    async fn revoke(self, _: Context, node: NodeId, reason: String) -> Result<(), DirError> {
        self.allow("revoke", ADMINS)?;
        let r = async {
            let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
            let why = reason.clone();
            let version = self.blocking(move |s| s.revoke(node, &why)).await?;
            let (version, all) =
                self.blocking(move |s| s.revocations().map(|(v, n)| (v.max(version), n))).await?;
            self.shared.tls.revocations().replace(version, all);
            let closed = self.shared.conns.close_node(&node);
            self.shared.pool.forget_node(node);
            warn!(%node, %reason, version, connections_closed = closed, "node revoked");
            Ok(())
        }
        .await;
        reply("revoke", r)
    }

    async fn revocations(self, _: Context) -> Result<RevocationList, DirError> {
        self.allow("revocations", ANY)?;
        let r = self
            .blocking(|s| s.revocations())
            .await
            .map(|(version, nodes)| RevocationList { version, nodes });
        reply("revocations", r)
    }

    async fn volume_info(self, _: Context) -> Result<VolumeInfo, DirError> {
        self.member("volume_info")?;
        reply("volume_info", self.store.volume_info())
    }

    #[instrument(skip_all, fields(block_size = info.block_size, replicas = info.replicas))]
    async fn init_volume(
        self,
        _: Context,
        info: VolumeInfo,
        uid: u32,
        gid: u32,
    ) -> Result<VolumeInfo, DirError> {
        self.member("init_volume")?;
        let r = self.blocking(move |s| s.init_volume(&info, uid, gid)).await;
        if let Ok(v) = &r {
            info!(volume = %v.id, "volume initialized");
        }
        reply("init_volume", r)
    }

    #[instrument(level = "debug", skip_all, fields(%parent))]
    async fn lookup(self, _: Context, parent: InodeId, name: Vec<u8>) -> Result<Attr, DirError> {
        self.member("lookup")?;
        let r = self.blocking(move |s| s.lookup(parent, &name)).await;
        reply("lookup", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn getattr(self, _: Context, ino: InodeId) -> Result<Attr, DirError> {
        self.member("getattr")?;
        let r = self.blocking(move |s| s.getattr(ino)).await;
        reply("getattr", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn setattr(self, _: Context, ino: InodeId, set: SetAttr) -> Result<Attr, DirError> {
        self.member("setattr")?;
        let origin = self.origin();
        let r = self
            .with_shared(move |sh| {
                let attr = sh.store.setattr(ino, &set)?;
                sh.changes.record_from(origin, ino_change(ino));
                Ok(attr)
            })
            .await;
        reply("setattr", r)
    }

    #[instrument(level = "debug", skip_all, fields(%parent))]
    async fn mkdir(
        self,
        _: Context,
        parent: InodeId,
        name: Vec<u8>,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, DirError> {
        self.apply(None, Mutation::Mkdir { parent, name, perm, uid, gid }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(%parent, kind = ?new.kind))]
    async fn create(
        self,
        _: Context,
        parent: InodeId,
        name: Vec<u8>,
        new: NewInode,
    ) -> Result<Attr, DirError> {
        self.apply(None, Mutation::Create { parent, name, new }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(%parent))]
    async fn unlink(self, _: Context, parent: InodeId, name: Vec<u8>) -> Result<(), DirError> {
        self.apply(None, Mutation::Unlink { parent, name }).await.map(drop)
    }

    #[instrument(level = "debug", skip_all, fields(%parent))]
    async fn rmdir(self, _: Context, parent: InodeId, name: Vec<u8>) -> Result<(), DirError> {
        self.apply(None, Mutation::Rmdir { parent, name }).await.map(drop)
    }

    #[instrument(level = "debug", skip_all, fields(%parent, %new_parent, flags))]
    async fn rename(
        self,
        _: Context,
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        flags: u32,
    ) -> Result<InodeId, DirError> {
        self.apply(None, Mutation::Rename { parent, name, new_parent, new_name, flags }).await?.ino()
    }

    #[instrument(level = "debug", skip_all, fields(%dir, after, limit))]
    async fn readdir(
        self,
        _: Context,
        dir: InodeId,
        after: u64,
        limit: u32,
    ) -> Result<ReadDirPage, DirError> {
        self.member("readdir")?;
        let r = self.blocking(move |s| s.readdir(dir, after, limit)).await;
        reply("readdir", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, count))]
    async fn reserve_inodes(
        self,
        _: Context,
        session: SessionId,
        count: u32,
    ) -> Result<(InodeId, u32), DirError> {
        self.session_owner("reserve_inodes", session)?;
        let r = self.with_shared(move |sh| sh.sessions.reserve(&sh.store, session, count)).await;
        reply("reserve_inodes", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, %parent, ino = %new.ino))]
    async fn symlink(
        self,
        _: Context,
        session: SessionId,
        parent: InodeId,
        name: Vec<u8>,
        new: NewSymlink,
    ) -> Result<Attr, DirError> {
        self.apply(None, Mutation::Symlink { session, parent, name, new }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn readlink(self, _: Context, ino: InodeId) -> Result<Vec<u8>, DirError> {
        self.member("readlink")?;
        let r = self.blocking(move |s| s.readlink(ino)).await;
        reply("readlink", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino, %new_parent))]
    async fn link(
        self,
        _: Context,
        ino: InodeId,
        new_parent: InodeId,
        new_name: Vec<u8>,
    ) -> Result<Attr, DirError> {
        self.apply(None, Mutation::Link { ino, new_parent, new_name }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(request, op = op.op()))]
    async fn mutate(self, _: Context, request: u64, op: Mutation) -> Result<Mutated, DirError> {
        self.apply(Some(request), op).await
    }

    async fn statfs(self, _: Context) -> Result<StatFs, DirError> {
        self.member("statfs")?;
        let r = async {
            let vol = self.store.volume_info()?;
            let inodes = self.shared.blocking(|s| s.inode_count()).await?;
            let (used, free, live) = self.peers().live_totals();
            let r = u64::from(vol.replicas.max(1));
            Ok(StatFs {
                total_bytes: used.saturating_add(free) / r,
                free_bytes: free / r,
                inodes,
                live_peers: live,
            })
        }
        .await;
        reply("statfs", r)
    }

    #[instrument(level = "debug", skip_all, fields(count, chunk_bytes))]
    async fn placement(
        self,
        _: Context,
        count: u32,
        chunk_bytes: u64,
    ) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        self.member("placement")?;
        let r = (|| {
            let vol = self.store.volume_info()?;
            if count > MAX_PLACEMENT_COUNT {
                return Err(invalid(format!(
                    "placement of {count} chunks asked (at most {MAX_PLACEMENT_COUNT})"
                )));
            }
            let config = &self.shared.config;
            let caps = PlacementCaps {
                per_call: config.max_placement_bytes_per_call,
                per_principal: config.max_promised_bytes_per_principal,
            };
            Ok(self.peers().place(vol.replicas, count, chunk_bytes, &self.principal(), caps)?)
        })();
        reply("placement", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino, size = commit.size, blocks = commit.blocks.len()))]
    async fn commit_layout(self, _: Context, ino: InodeId, commit: CommitLayout) -> Result<Attr, DirError> {
        self.member("commit_layout")?;
        let origin = self.origin();
        let r = self
            .with_shared(move |sh| {
                let max = commit_limit(sh);
                if commit.blocks.len() > max {
                    return Err(invalid(format!(
                        "a commit carries at most {max} entries here, this one {}",
                        commit.blocks.len()
                    )));
                }
                check_held(sh, &commit)?;
                let attr = sh.store.commit_layout(ino, &commit)?;
                sh.changes.record_from(origin, ino_change(ino));
                Ok(attr)
            })
            .await;
        reply("commit_layout", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino, blocks = reseals.len()))]
    async fn reseal_blocks(
        self,
        _: Context,
        ino: InodeId,
        reseals: Vec<Reseal>,
    ) -> Result<Vec<bool>, DirError> {
        self.member("reseal_blocks")?;
        let origin = self.origin();
        let r = self
            .with_shared(move |sh| {
                let applied = sh.store.reseal_blocks(ino, &reseals)?;
                if applied.iter().any(|a| *a) {
                    sh.changes.record_from(origin, ino_change(ino));
                }
                Ok(applied)
            })
            .await;
        reply("reseal_blocks", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino, first, max))]
    async fn get_layout(
        self,
        _: Context,
        ino: InodeId,
        first: u64,
        max: u32,
    ) -> Result<LayoutPage, DirError> {
        self.member("get_layout")?;
        let r = self.blocking(move |s| s.get_layout(ino, first, max)).await;
        let r = r.map(|page| self.layout_page(page));
        reply("get_layout", r)
    }

    #[instrument(level = "debug", skip_all, fields(chunks = chunks.len()))]
    async fn chunk_locations(self, _: Context, chunks: Vec<ChunkId>) -> Result<Vec<Vec<PeerLoc>>, DirError> {
        self.member("chunk_locations")?;
        let r = async {
            if chunks.len() > MAX_LOCATION_QUERY {
                return Err(invalid(format!("{} chunks asked (at most {MAX_LOCATION_QUERY})", chunks.len())));
            }
            let ids = self.blocking(move |s| s.chunk_replicas(&chunks)).await?;
            let peers = self.peers();
            Ok(ids.iter().map(|set| peers.locs(set)).collect())
        }
        .await;
        reply("chunk_locations", r)
    }

    #[instrument(skip_all, fields(peer = %reg.id, addr = %reg.addr, host = %reg.labels.host, zone = %reg.labels.zone))]
    async fn register_peer(self, _: Context, reg: PeerRegistration) -> Result<(), DirError> {
        self.the_peer("register_peer", reg.id)?;
        let r = async {
            check_peer_addr(&reg.addr)?;
            if reg.labels.host.len() > MAX_LABEL || reg.labels.zone.len() > MAX_LABEL {
                return Err(invalid(format!("host and zone labels are limited to {MAX_LABEL} bytes")));
            }
            let id = reg.id;
            let rec = self
                .blocking(move |s| s.register_peer(id, &reg.addr, reg.usage, &reg.labels, Timestamp::now()))
                .await?;
            let draining = rec.draining;
            self.peers().registered(id, rec);
            info!(draining, "peer registered");
            Ok(())
        }
        .await;
        reply("register_peer", r)
    }

    #[instrument(level = "debug", skip_all, fields(peer = %id))]
    async fn heartbeat(self, _: Context, id: PeerId, usage: PeerUsage) -> Result<HeartbeatReply, DirError> {
        self.the_peer("heartbeat", id)?;
        let r = async {
            let now = Timestamp::now();
            let due = self.peers().heartbeat(id, usage, now)?;
            if due {
                self.blocking(move |s| s.heartbeat_peer(id, usage, now)).await?;
            }
            Ok(HeartbeatReply { revocations: self.revocation_version() })
        }
        .await;
        reply("heartbeat", r)
    }

    async fn list_peers(self, _: Context) -> Result<Vec<PeerStatus>, DirError> {
        self.member("list_peers")?;
        Ok(self.peers().list())
    }

    #[instrument(skip_all, fields(%peer, chunks = chunks.len()))]
    async fn report_corrupt(self, _: Context, peer: PeerId, chunks: Vec<ChunkId>) -> Result<(), DirError> {
        self.the_peer("report_corrupt", peer)?;
        let r = async {
            if chunks.len() > MAX_LOCATION_QUERY {
                return Err(invalid(format!(
                    "{} chunks reported (at most {MAX_LOCATION_QUERY})",
                    chunks.len()
                )));
            }
            let removed = self.blocking(move |s| s.drop_replicas(peer, &chunks)).await?;
            if removed > 0 {
                warn!(removed, "corrupt replicas dropped from the index; repair will restore them");
                self.shared.repair_kick.notify_one();
            }
            Ok(())
        }
        .await;
        reply("report_corrupt", r)
    }

    #[instrument(skip_all, fields(peer = %id))]
    async fn drain_peer(self, _: Context, id: PeerId) -> Result<(), DirError> {
        self.allow("drain_peer", ADMINS)?;
        let r = async {
            let rec = self.blocking(move |s| s.set_draining(id)).await?;
            self.peers().set_draining(id);
            info!(addr = %rec.addr, "peer draining: no new chunks; its chunks are being copied elsewhere");
            self.shared.repair_kick.notify_one();
            Ok(())
        }
        .await;
        reply("drain_peer", r)
    }

    /// Cost: the inode, unreferenced and tombstone counts (constant
    /// time) and, for the chunk-index figures, the last survey when its
    /// inputs (peer liveness and drain flags, chunk generation) are
    /// unchanged or, on an index of more than [`STATUS_BIG_INDEX`] chunks,
    /// when it is younger than [`STATUS_SURVEY_MAX_AGE`]; otherwise one
    /// survey of the whole index (see [`crate::survey`]: about half a
    /// second per million chunks), which is kept for the next call.
    async fn cluster_status(self, _: Context) -> Result<ClusterStatus, DirError> {
        self.member("cluster_status")?;
        let r = async {
            let (view, counts) = {
                let peers = self.peers();
                (peers.view(), peers.state_counts())
            };
            let stats = &self.shared.stats;
            let (started_at, started) = self.shared.started;
            let me = DirsvcStatus {
                addr: self.shared.addr.get().cloned().unwrap_or_else(|| self.shared.config.listen.clone()),
                leader: true,
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: PROTOCOL_VERSION,
                started: started_at,
                uptime_secs: started.elapsed().as_secs(),
            };
            let mut st = ClusterStatus {
                repairs_in_flight: stats.repairs_in_flight.load(Ordering::Relaxed),
                repaired_total: stats.repaired_total.load(Ordering::Relaxed),
                repaired_bytes_total: stats.repaired_bytes_total.load(Ordering::Relaxed),
                gc_deleted_total: stats.gc_deleted_total.load(Ordering::Relaxed),
                peers_up: counts[0],
                peers_suspect: counts[1],
                peers_down: counts[2],
                peers_draining: counts[3],
                peers_drained: counts[4],
                dirsvc: vec![me],
                ..ClusterStatus::default()
            };
            let (inodes, pending, tombstones) = self
                .shared
                .blocking(|s| Ok((s.inode_count()?, s.unreferenced_count()?, s.tombstone_count()?)))
                .await?;
            st.inodes = inodes;
            st.gc_pending = pending;
            st.gc_tombstones = tombstones;
            if let Ok(vol) = self.store.volume_info() {
                let inputs = (view.fingerprint(), self.store.chunk_generation());
                let cached = self.shared.last_survey().filter(|c| {
                    c.inputs == inputs
                        || (c.chunks > STATUS_BIG_INDEX && c.taken.elapsed() < STATUS_SURVEY_MAX_AGE)
                });
                let figures = match cached {
                    Some(c) => c,
                    None => {
                        let snapshot = view.clone();
                        let s = self.shared.blocking(move |s| survey(s, &snapshot, vol.replicas, 0)).await?;
                        self.peers().set_survey(&view, &s.peers);
                        let f = SurveyFigures::of(inputs, &s);
                        self.shared.record_survey(f.clone());
                        f
                    }
                };
                st.chunks = figures.chunks;
                st.under_replicated = figures.under_replicated;
                st.lost = figures.lost;
                st.referenced_bytes = figures.referenced_bytes;
                st.stored_bytes = figures.stored_bytes;
                st.surveyed_at = figures.at;
            }
            Ok(st)
        }
        .await;
        reply("cluster_status", r)
    }

    /// Admin only (membership).
    #[instrument(skip_all, fields(name = %member.name, version))]
    async fn add_member(
        self,
        _: Context,
        version: u64,
        member: Member,
        wrapped: Vec<Vec<u8>>,
    ) -> Result<Keyring, DirError> {
        self.allow("add_member", ADMINS)?;
        let r = self.blocking(move |s| s.add_member(version, &member, &wrapped)).await;
        if let Ok(k) = &r {
            info!(keyring_version = k.version, members = k.members.len(), "member added");
        }
        reply("add_member", r)
    }

    /// Admin only (membership).
    #[instrument(skip_all, fields(%name, version, epoch = epoch.epoch))]
    async fn remove_member(
        self,
        _: Context,
        version: u64,
        name: String,
        epoch: KeyEpoch,
    ) -> Result<(Keyring, Member), DirError> {
        self.allow("remove_member", ADMINS)?;
        let r = self.blocking(move |s| s.remove_member(version, &name, &epoch)).await;
        if let Ok((k, m)) = &r {
            info!(
                keyring_version = k.version,
                key_epoch = k.newest_epoch(),
                nodes = m.nodes.len(),
                "member removed; new data goes to the new key epoch"
            );
        }
        reply("remove_member", r)
    }

    #[instrument(skip_all, fields(label = %open.label, reclaim = ?open.reclaim))]
    async fn open_session(self, _: Context, open: SessionOpen) -> Result<SessionGrant, DirError> {
        let owner = self.member("open_session")?.node;
        let r = self
            .with_shared(move |sh| {
                let mut grant = sh.sessions.open(&sh.store, open, owner)?;
                grant.max_commit_entries = u32::try_from(commit_limit(sh)).unwrap_or(u32::MAX);
                Ok(grant)
            })
            .await;
        if let Ok(grant) = &r {
            self.bind(grant.id);
        }
        reply("open_session", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session))]
    async fn renew_session(self, _: Context, session: SessionId) -> Result<Renewal, DirError> {
        self.session_owner("renew_session", session)?;
        self.bind(session);
        let r =
            self.shared.sessions.renew(session).map(|()| Renewal { revocations: self.revocation_version() });
        reply("renew_session", r)
    }

    #[instrument(skip_all, fields(%session))]
    async fn close_session(self, _: Context, session: SessionId) -> Result<(), DirError> {
        self.session_owner("close_session", session)?;
        let r = self.with_shared(move |sh| sh.sessions.end(&sh.store, &[session], "closed")).await;
        reply("close_session", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, %ino))]
    async fn open_file(self, _: Context, session: SessionId, ino: InodeId) -> Result<Attr, DirError> {
        self.session_owner("open_file", session)?;
        self.bind(session);
        let r = self.with_shared(move |sh| sh.sessions.open_file(&sh.store, session, ino)).await;
        reply("open_file", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, %ino))]
    async fn release_file(self, _: Context, session: SessionId, ino: InodeId) -> Result<(), DirError> {
        self.session_owner("release_file", session)?;
        let r = self.with_shared(move |sh| sh.sessions.release_file(&sh.store, session, ino)).await;
        reply("release_file", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, ino = %lock.ino, owner = lock.owner, kind = ?lock.kind, flavor = ?lock.flavor, start = lock.start, end = lock.end, wait_ms))]
    async fn set_lock(
        self,
        ctx: Context,
        session: SessionId,
        lock: Lock,
        wait_ms: u32,
    ) -> Result<(), DirError> {
        self.session_owner("set_lock", session)?;
        let r = async {
            self.shared.sessions.check(session)?;
            let ino = lock.ino;
            self.blocking(move |s| s.getattr(ino)).await?;
            self.shared.sessions.set_lock(session, lock, wait_within(&ctx, wait_ms)).await
        }
        .await;
        reply("set_lock", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, %ino, owner, ?flavor, start, end))]
    async fn unlock(
        self,
        _: Context,
        session: SessionId,
        ino: InodeId,
        owner: u64,
        flavor: LockFlavor,
        start: u64,
        end: u64,
    ) -> Result<(), DirError> {
        self.session_owner("unlock", session)?;
        reply("unlock", self.shared.sessions.unlock(session, ino, owner, flavor, start, end))
    }

    #[instrument(level = "debug", skip_all, fields(%session, ino = %lock.ino))]
    async fn get_lock(
        self,
        _: Context,
        session: SessionId,
        lock: Lock,
    ) -> Result<Option<LockConflict>, DirError> {
        self.session_owner("get_lock", session)?;
        reply("get_lock", self.shared.sessions.get_lock(session, lock))
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn getxattr(self, _: Context, ino: InodeId, name: Vec<u8>) -> Result<Vec<u8>, DirError> {
        self.member("getxattr")?;
        let r = self.blocking(move |s| s.getxattr(ino, &name)).await;
        reply("getxattr", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn listxattr(self, _: Context, ino: InodeId) -> Result<Vec<Vec<u8>>, DirError> {
        self.member("listxattr")?;
        let r = self.blocking(move |s| s.listxattr(ino)).await;
        reply("listxattr", r)
    }

    #[instrument(level = "debug", skip_all, fields(%ino, value = value.len(), flags))]
    async fn setxattr(
        self,
        _: Context,
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    ) -> Result<Attr, DirError> {
        self.apply(None, Mutation::SetXattr { ino, name, value, flags }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(%ino))]
    async fn removexattr(self, _: Context, ino: InodeId, name: Vec<u8>) -> Result<Attr, DirError> {
        self.apply(None, Mutation::RemoveXattr { ino, name }).await?.attr()
    }

    #[instrument(level = "debug", skip_all, fields(%session, after, wait_ms))]
    async fn poll_changes(
        self,
        ctx: Context,
        session: SessionId,
        after: u64,
        wait_ms: u32,
    ) -> Result<ChangeBatch, DirError> {
        self.session_owner("poll_changes", session)?;
        let r = async {
            self.shared.sessions.check(session)?;
            self.bind(session);
            let wait = wait_within(&ctx, wait_ms);
            // A long poll holds a waiting place; an immediate answer none.
            let _slot = if wait.is_zero() { None } else { Some(self.shared.sessions.wait_slot(session)?) };
            Ok(self.shared.changes.poll(after, Some(session), wait).await)
        }
        .await;
        reply("poll_changes", r)
    }

    #[instrument(skip_all, fields(peer = %id))]
    async fn undrain_peer(self, _: Context, id: PeerId) -> Result<(), DirError> {
        self.allow("undrain_peer", ADMINS)?;
        let r = async {
            let rec = self.blocking(move |s| s.clear_draining(id)).await?;
            self.peers().clear_draining(id);
            info!(addr = %rec.addr, "drain taken back: the peer gets new chunks again while it is up");
            self.shared.repair_kick.notify_one();
            Ok(())
        }
        .await;
        reply("undrain_peer", r)
    }

    async fn server_time(self, _: Context) -> Result<Timestamp, DirError> {
        self.allow("server_time", ANY)?;
        Ok(Timestamp::now())
    }

    async fn readdir_plus(
        self,
        _: Context,
        dir: InodeId,
        after: u64,
        limit: u32,
    ) -> Result<ReadDirPlusPage, DirError> {
        self.member("readdir_plus")?;
        let r = self.blocking(move |s| s.readdir_plus(dir, after, limit)).await;
        reply("readdir_plus", r)
    }

    #[instrument(level = "debug", skip_all, fields(%session, %ino))]
    async fn open_layout(
        self,
        _: Context,
        session: SessionId,
        ino: InodeId,
        max: u32,
    ) -> Result<LayoutPage, DirError> {
        self.session_owner("open_layout", session)?;
        self.bind(session);
        let r = self
            .with_shared(move |sh| {
                sh.sessions.open_file(&sh.store, session, ino)?;
                let page = sh.store.get_layout(ino, 0, max);
                if page.is_err() {
                    // No layout to open (a directory, a special node) or
                    // the inode went: the mark goes with the failed open.
                    sh.sessions.release_file(&sh.store, session, ino)?;
                }
                page
            })
            .await;
        let r = r.map(|page| self.layout_page(page));
        reply("open_layout", r)
    }
}

/// A peer address must look like `host:port`.
fn check_peer_addr(addr: &str) -> Result<(), Error> {
    let ok = addr.len() <= MAX_PEER_ADDR
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("peer address {addr:?} is not host:port")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_must_be_host_and_port() {
        assert!(check_peer_addr("127.0.0.1:7701").is_ok());
        assert!(check_peer_addr("[::1]:7701").is_ok());
        assert!(check_peer_addr("peer-a.example:80").is_ok());
        for bad in ["", "127.0.0.1", ":80", "h:99999", "h:x"] {
            assert!(check_peer_addr(bad).is_err(), "{bad:?}");
        }
        assert!(check_peer_addr(&format!("{}:1", "a".repeat(300))).is_err());
    }
}
