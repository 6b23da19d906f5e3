//! Frames as a connection receives them: a byte stream cut into
//! length-delimited frames (4-byte big-endian length, at most
//! `MAX_FRAME_BYTES`), each decoded by [`common::wire::decode`] as the
//! message type that end of the connection reads. Servers read
//! `ClientMessage<…Request>`, clients `Response<…Response>`, for both
//! services.

use common::config::MAX_FRAME_BYTES;
use common::rpc::dir::{
    Attr, ChangeBatch, CommitLayout, DirError, DirServiceRequest, DirServiceResponse, FileKind, Lock,
    LockFlavor, LockKind, NewInode, PeerLabels, PeerRegistration, PeerUsage, SessionId, SessionOpen, SetAttr,
    StorageFs, StoredChunk, VolumeInfo,
};
use common::rpc::peer::{Bytes, PeerError, PeerServiceRequest, PeerServiceResponse};
use common::rpc::PeerLoc;
use common::time::Timestamp;
use common::wire::{self, Inbound};
use common::{ChunkId, InodeId, PeerId, VolumeId};
use tarpc::{ClientMessage, Request, Response};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Cuts `data` into frames as the transport does and decodes each as an
/// `In`; stops at the first frame the codec refuses (an oversize length:
/// the connection would close) or at the end of the bytes.
fn frames<In: Inbound>(data: &[u8]) {
    let mut codec = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = wire::decode::<In>(&frame);
    }
    // End of stream: what the codec does with a partial frame left over.
    let _ = codec.decode_eof(&mut buf);
}

/// A server reading `DirService` requests.
pub fn dir_request(data: &[u8]) {
    frames::<ClientMessage<DirServiceRequest>>(data);
}

/// A client reading `DirService` responses.
pub fn dir_response(data: &[u8]) {
    frames::<Response<DirServiceResponse>>(data);
}

/// A peer reading `PeerService` requests.
pub fn peer_request(data: &[u8]) {
    frames::<ClientMessage<PeerServiceRequest>>(data);
}

/// A client, dirsvc or peer reading `PeerService` responses.
pub fn peer_response(data: &[u8]) {
    frames::<Response<PeerServiceResponse>>(data);
}

/// One frame: length prefix and the encoded message.
fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let body = wire::encode(msg).unwrap_or_default();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Each message as a frame, plus all of them in one stream.
fn streams(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let all = frames.concat();
    let mut out = frames;
    out.push(all);
    out
}

fn request<T>(id: u64, message: T) -> ClientMessage<T> {
    ClientMessage::Request(Request { context: tarpc::context::current(), id, message })
}

fn t() -> Timestamp {
    Timestamp { secs: 1_700_000_000, nanos: 5 }
}

fn usage() -> PeerUsage {
    PeerUsage {
        capacity_bytes: 1 << 40,
        free_bytes: 1 << 39,
        used_bytes: 1 << 39,
        chunks: 7,
        fs: Some(StorageFs { id: [4; 16], total_bytes: 1 << 41, avail_bytes: 1 << 38 }),
        scrub: None,
    }
}

fn lock() -> Lock {
    Lock {
        ino: InodeId(9),
        owner: 77,
        flavor: LockFlavor::Posix,
        kind: LockKind::Write,
        start: 10,
        end: u64::MAX,
        pid: 1234,
    }
}

fn chunk() -> StoredChunk {
    StoredChunk {
        id: ChunkId([3; 32]),
        len: (1 << 20) + 52,
        replicas: vec![PeerId([1; 16]), PeerId([2; 16])],
        epoch: 1,
        mac: [0x4d; 32],
        inline: None,
    }
}

fn attr() -> Attr {
    Attr {
        ino: InodeId(9),
        kind: FileKind::File,
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        size: 3 << 20,
        nlink: 1,
        atime: t(),
        mtime: t(),
        ctime: t(),
        crtime: t(),
        rdev: 0,
        stored_bytes: 3 << 20,
    }
}

fn loc(k: u8) -> PeerLoc {
    PeerLoc { id: PeerId([k; 16]), addr: format!("10.0.0.{k}:7701"), live: k.is_multiple_of(2) }
}

/// Requests of every shape `DirService` receives.
pub fn dir_request_seeds() -> Vec<Vec<u8>> {
    use DirServiceRequest as R;
    let name = b"sealed-name-0123456789abcdef".to_vec();
    let msgs = vec![
        R::Hello {},
        R::VolumeInfo {},
        R::Lookup { parent: InodeId::ROOT, name: name.clone() },
        R::Getattr { ino: InodeId(2) },
        R::Setattr {
            ino: InodeId(2),
            set: SetAttr {
                perm: Some(0o4755),
                uid: Some(1),
                gid: None,
                size: Some(1 << 33),
                atime: Some(t()),
                mtime: Some(t()),
                kill_suid_sgid: true,
            },
        },
        R::Mkdir { parent: InodeId::ROOT, name: name.clone(), perm: 0o755, uid: 0, gid: 0 },
        R::Create {
            parent: InodeId::ROOT,
            name: name.clone(),
            new: NewInode { kind: FileKind::CharDevice, perm: 0o600, uid: 0, gid: 0, rdev: 0x0501 },
        },
        R::Rename {
            parent: InodeId::ROOT,
            name: name.clone(),
            new_parent: InodeId(5),
            new_name: b"other".to_vec(),
            flags: 2,
        },
        R::Readdir { dir: InodeId::ROOT, after: 17, limit: 512 },
        R::ReserveInodes { session: SessionId(42), count: 64 },
        R::Symlink {
            session: SessionId(42),
            parent: InodeId::ROOT,
            name: name.clone(),
            new: common::rpc::dir::NewSymlink {
                ino: InodeId(77),
                target: vec![0xa5; 80],
                size: 32,
                uid: 0,
                gid: 0,
            },
        },
        R::ResealBlocks {
            ino: InodeId(9),
            reseals: vec![common::rpc::dir::Reseal { index: 0, old: ChunkId([3; 32]), new: chunk() }],
        },
        R::RenewCertificate {},
        R::Revoke { node: common::NodeId([5; 16]), reason: "lost laptop".into() },
        R::Join { token_id: [1; 8], secret: [2; 16], role: common::rpc::Role::Peer, csr: vec![0x30; 300] },
        R::CreateJoinToken { role: common::rpc::Role::Peer, ttl_secs: 3600 },
        R::Placement { count: 1, chunk_bytes: (1 << 20) + 48 },
        R::CommitLayout {
            ino: InodeId(9),
            commit: CommitLayout {
                held_ms: 0,
                attrs: Default::default(),
                size: 3 << 20,
                mtime: t(),
                blocks: vec![(0, Some(chunk())), (1, None)],
            },
        },
        R::GetLayout { ino: InodeId(9), first: 0, max: 1024 },
        R::ChunkLocations { chunks: vec![ChunkId([1; 32]), ChunkId([2; 32])] },
        R::RegisterPeer {
            reg: PeerRegistration {
                id: PeerId([1; 16]),
                addr: "peer-1:7701".into(),
                usage: usage(),
                labels: PeerLabels { host: "h1".into(), zone: "z1".into() },
            },
        },
        R::Heartbeat { id: PeerId([1; 16]), usage: usage() },
        R::ReportCorrupt { peer: PeerId([1; 16]), chunks: vec![ChunkId([8; 32])] },
        R::OpenSession {
            open: SessionOpen {
                label: "host pid=1 /mnt".into(),
                reclaim: Some(SessionId(42)),
                open_inodes: vec![InodeId(9), InodeId(10)],
                locks: vec![lock()],
            },
        },
        R::SetLock { session: SessionId(42), lock: lock(), wait_ms: 2000 },
        R::Unlock {
            session: SessionId(42),
            ino: InodeId(9),
            owner: 77,
            flavor: LockFlavor::Flock,
            start: 0,
            end: 9,
        },
        R::Setxattr { ino: InodeId(9), name: b"sealed-xattr".to_vec(), value: vec![1; 100], flags: 1 },
        R::PollChanges { session: SessionId(42), after: 99, wait_ms: 10_000 },
        R::InitVolume {
            info: VolumeInfo {
                id: VolumeId([6; 16]),
                block_size: 1 << 20,
                replicas: 3,
                keyring: common::rpc::dir::Keyring {
                    version: 3,
                    epochs: vec![
                        common::rpc::dir::KeyEpoch {
                            epoch: 0,
                            wrapped: vec![0x61; 200],
                            check: [1; 32],
                            link: [0; 32],
                        },
                        common::rpc::dir::KeyEpoch {
                            epoch: 1,
                            wrapped: vec![0x62; 200],
                            check: [2; 32],
                            link: [3; 32],
                        },
                    ],
                    members: vec![common::rpc::dir::Member {
                        name: "owner".into(),
                        recipient: "age1example".into(),
                        nodes: vec![common::NodeId([4; 16])],
                    }],
                },
                legacy_layouts: false,
            },
            uid: 0,
            gid: 0,
        },
    ];
    let mut frames: Vec<Vec<u8>> =
        msgs.into_iter().enumerate().map(|(i, m)| frame(&request(i as u64, m))).collect();
    let cancel: ClientMessage<DirServiceRequest> =
        ClientMessage::Cancel { trace_context: Default::default(), request_id: 3 };
    frames.push(frame(&cancel));
    streams(frames)
}

/// Responses of every shape a `DirService` client receives.
pub fn dir_response_seeds() -> Vec<Vec<u8>> {
    use DirServiceResponse as R;
    let msgs = vec![
        R::Hello(5),
        R::Getattr(Ok(attr())),
        R::Lookup(Err(DirError::NotFound)),
        R::Placement(Ok(vec![vec![loc(1), loc(2)], vec![loc(3)]])),
        R::Placement(Err(DirError::PeersFull { needed: 3, with_room: 1, live: 4 })),
        R::GetLayout(Ok(common::rpc::dir::LayoutPage {
            attr: attr(),
            blocks: vec![common::rpc::dir::BlockLoc {
                index: 0,
                chunk: ChunkId([3; 32]),
                len: 1 << 20,
                replicas: vec![loc(1)],
                epoch: 1,
                mac: [0x4d; 32],
                inline: None,
            }],
            eof: true,
        })),
        R::Readdir(Ok(common::rpc::dir::ReadDirPage {
            entries: vec![common::rpc::dir::DirEntry {
                name: vec![7; 30],
                ino: InodeId(4),
                kind: FileKind::Dir,
                cookie: 12,
            }],
            eof: false,
        })),
        R::PollChanges(Ok(ChangeBatch {
            changes: vec![common::rpc::dir::Change {
                ino: InodeId(4),
                entry: Some((InodeId(1), vec![9; 20])),
            }],
            last: 1 << 40,
            overflow: false,
        })),
        R::VolumeInfo(Ok(VolumeInfo {
            id: VolumeId([6; 16]),
            block_size: 1 << 20,
            replicas: 3,
            keyring: common::rpc::dir::Keyring {
                version: 3,
                epochs: vec![
                    common::rpc::dir::KeyEpoch {
                        epoch: 0,
                        wrapped: vec![0x61; 200],
                        check: [1; 32],
                        link: [0; 32],
                    },
                    common::rpc::dir::KeyEpoch {
                        epoch: 1,
                        wrapped: vec![0x62; 200],
                        check: [2; 32],
                        link: [3; 32],
                    },
                ],
                members: vec![common::rpc::dir::Member {
                    name: "owner".into(),
                    recipient: "age1example".into(),
                    nodes: vec![common::NodeId([4; 16])],
                }],
            },
            legacy_layouts: true,
        })),
        R::Heartbeat(Ok(common::rpc::dir::HeartbeatReply { revocations: 7 })),
        R::Revocations(Ok(common::rpc::dir::RevocationList {
            version: 7,
            nodes: vec![common::NodeId([5; 16])],
        })),
        R::Join(Ok(common::rpc::dir::JoinGrant {
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            ca_pem: String::new(),
        })),
        R::Setattr(Err(DirError::Invalid("mtime: invalid timestamp".into()))),
        R::SetLock(Err(DirError::Limit("locks".into()))),
    ];
    let frames = msgs
        .into_iter()
        .enumerate()
        .map(|(i, m)| frame(&Response { request_id: i as u64, message: Ok(m) }))
        .collect();
    streams(frames)
}

/// Requests of every shape `PeerService` receives.
pub fn peer_request_seeds() -> Vec<Vec<u8>> {
    use PeerServiceRequest as R;
    let msgs = vec![
        R::Put { id: ChunkId([1; 32]), bytes: Bytes::from(vec![0x5a; 300]) },
        R::Get { id: ChunkId([1; 32]) },
        R::GetRange { id: ChunkId([1; 32]), offset: 1 << 20, len: 4096 },
        R::Has { ids: vec![ChunkId([1; 32]), ChunkId([2; 32])] },
        R::Delete { id: ChunkId([1; 32]) },
        R::Usage {},
        R::FetchFrom { id: ChunkId([1; 32]), source: loc(2) },
        R::ListChunks { after: Some(ChunkId([1; 32])), limit: 1000 },
    ];
    let frames = msgs.into_iter().enumerate().map(|(i, m)| frame(&request(i as u64, m))).collect();
    streams(frames)
}

/// Responses of every shape a `PeerService` client receives.
pub fn peer_response_seeds() -> Vec<Vec<u8>> {
    use PeerServiceResponse as R;
    let msgs = vec![
        R::Get(Ok(Bytes::from(vec![0x5a; 300]))),
        R::Get(Err(PeerError::HashMismatch(ChunkId([1; 32])))),
        R::Has(Ok(vec![true, false, true])),
        R::Usage(Ok(usage())),
        R::ListChunks(Ok(vec![(ChunkId([1; 32]), 1_700_000_000), (ChunkId([2; 32]), -5)])),
        R::FetchFrom(Err(PeerError::SourceFailed("unreachable".into()))),
    ];
    let frames = msgs
        .into_iter()
        .enumerate()
        .map(|(i, m)| frame(&Response { request_id: i as u64, message: Ok(m) }))
        .collect();
    streams(frames)
}
