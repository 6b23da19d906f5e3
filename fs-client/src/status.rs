//! `fs-client status`: the cluster report (text and JSON) and the per-file
//! durability report read from a mount's virtual extended attribute.
//!
//! The JSON shapes are a contract (documented in `fs-client status --help`
//! and docs/OPERATIONS.md, "Status"): fields are only ever added. Times
//! are RFC 3339 UTC strings (`null` when unknown), ages and durations
//! seconds, sizes bytes. The text form starts with the `key: value` lines
//! of earlier versions (scripts read them up to the first blank line),
//! then a peers table.

use crate::error::{Error, Result};
use crate::fs::{DurabilityReport, DURABILITY_XATTR};
use crate::remote::DirClient;
use common::rpc::dir::{ClusterStatus, PeerState, PeerStatus, ScrubProgress, VolumeInfo};
use common::time::Timestamp;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// What `fs-client status` (without a path) shows, as fetched from dirsvc.
#[derive(Clone, Debug)]
pub struct ClusterReport {
    /// `cluster_status`'s answer.
    pub status: ClusterStatus,
    /// `list_peers`'s answer, in id order.
    pub peers: Vec<PeerStatus>,
    /// The volume, if one was created.
    pub volume: Option<VolumeInfo>,
}

/// Fetches the cluster report from dirsvc (`cluster_status`, `list_peers`,
/// `volume_info`).
///
/// Errors: dirsvc's (e.g. `Unauthorized`) and transport errors.
pub async fn fetch_cluster(dir: &DirClient) -> Result<ClusterReport> {
    let status = dir.call(|c, ctx| async move { c.cluster_status(ctx).await }).await?;
    let peers = dir.call(|c, ctx| async move { c.list_peers(ctx).await }).await?;
    let volume = crate::volume::info(dir).await?;
    Ok(ClusterReport { status, peers, volume })
}

/// The lowercase name of a peer state (`up`, `suspect`, `down`,
/// `draining`, `drained`).
pub fn state_name(s: PeerState) -> &'static str {
    s.as_str()
}

/// `ts` as RFC 3339 in UTC with second precision (`2026-12-06T13:50:01Z`).
pub fn rfc3339(ts: Timestamp) -> String {
    let (y, m, d, h, min, sec) = common::time::utc_fields(ts.secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}Z")
}

fn time_or_null(ts: Option<Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn scrub_json(s: &ScrubProgress) -> Value {
    json!({
        "running": s.running,
        "checked": s.checked,
        "total": s.total,
        "pass_started": time_or_null(s.pass_started),
        "last_pass_end": time_or_null(s.last_pass_end),
        "passes": s.passes,
        "corrupt_found": s.corrupt_found,
    })
}

/// The cluster report as the JSON object `fs-client status --json` prints
/// (shape: docs/OPERATIONS.md, "Status").
pub fn cluster_json(r: &ClusterReport) -> Value {
    let s = &r.status;
    let dirsvc: Vec<Value> = s
        .dirsvc
        .iter()
        .map(|d| {
            json!({
                "addr": d.addr,
                "leader": d.leader,
                "version": d.version,
                "protocol": d.protocol,
                "started": rfc3339(d.started),
                "uptime_secs": d.uptime_secs,
            })
        })
        .collect();
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.loc.id.to_hex(),
                "state": state_name(p.state),
                "addr": p.loc.addr,
                "host": p.labels.host,
                "zone": p.labels.zone,
                "capacity_bytes": p.usage.capacity_bytes,
                "free_bytes": p.usage.free_bytes,
                "used_bytes": p.usage.used_bytes,
                "chunks": p.usage.chunks,
                "indexed_chunks": p.indexed_chunks,
                "last_heartbeat": rfc3339(p.last_heartbeat),
                "heartbeat_age_secs": p.heartbeat_age_ms as f64 / 1000.0,
                "scrub": p.usage.scrub.as_ref().map_or(Value::Null, scrub_json),
            })
        })
        .collect();
    let scrubbing: Vec<&ScrubProgress> = r.peers.iter().filter_map(|p| p.usage.scrub.as_ref()).collect();
    // The oldest "last full pass" over the reporting peers: every chunk
    // was checked at least once since then (null if one never finished).
    let oldest_pass = if scrubbing.is_empty() || scrubbing.iter().any(|s| s.last_pass_end.is_none()) {
        None
    } else {
        scrubbing.iter().filter_map(|s| s.last_pass_end).min()
    };
    let replicas = r.volume.as_ref().map(|v| v.replicas);
    json!({
        "dirsvc": dirsvc,
        "volume": r.volume.as_ref().map(|v| json!({
            "id": v.id.to_hex(),
            "block_size": v.block_size,
            "replicas": v.replicas,
        })),
        "peers": peers,
        "peer_states": {
            "up": s.peers_up,
            "suspect": s.peers_suspect,
            "down": s.peers_down,
            "draining": s.peers_draining,
            "drained": s.peers_drained,
        },
        "totals": {
            "inodes": s.inodes,
            "referenced_bytes": s.referenced_bytes,
            "stored_bytes": s.stored_bytes,
            "capacity_bytes": r.peers.iter().map(|p| p.usage.capacity_bytes).sum::<u64>(),
            "used_bytes": r.peers.iter().map(|p| p.usage.used_bytes).sum::<u64>(),
        },
        "replication": {
            "replicas": replicas,
            "chunks": s.chunks,
            "at_r": s.chunks.saturating_sub(s.under_replicated),
            "under_r": s.under_replicated,
            "lost": s.lost,
            "surveyed_at": rfc3339(s.surveyed_at),
        },
        "repair": {
            "waiting": s.under_replicated.saturating_sub(s.lost),
            "in_flight": s.repairs_in_flight,
            "repaired_total": s.repaired_total,
            "repaired_bytes_total": s.repaired_bytes_total,
        },
        "gc": {
            "pending": s.gc_pending,
            "tombstones": s.gc_tombstones,
            "deleted_total": s.gc_deleted_total,
        },
        "scrub": {
            "peers_reporting": scrubbing.len(),
            "running": scrubbing.iter().filter(|s| s.running).count(),
            "checked": scrubbing.iter().map(|s| s.checked).sum::<u64>(),
            "total": scrubbing.iter().map(|s| s.total).sum::<u64>(),
            "passes": scrubbing.iter().map(|s| s.passes).sum::<u64>(),
            "corrupt_found": scrubbing.iter().map(|s| s.corrupt_found).sum::<u64>(),
            "oldest_last_pass_end": time_or_null(oldest_pass),
        },
    })
}

/// The cluster report as text: `key: value` lines (those of earlier
/// versions first, unchanged), one `dirsvc:` line per instance, a blank
/// line, then one row per peer.
pub fn cluster_text(r: &ClusterReport) -> String {
    let s = &r.status;
    let mut out = String::new();
    for (k, v) in [
        ("chunks", s.chunks),
        ("under_replicated", s.under_replicated),
        ("lost", s.lost),
        ("repairs_in_flight", u64::from(s.repairs_in_flight)),
        ("repaired_total", s.repaired_total),
        ("repaired_bytes_total", s.repaired_bytes_total),
        ("gc_pending", s.gc_pending),
        ("gc_deleted_total", s.gc_deleted_total),
        ("peers_up", u64::from(s.peers_up)),
        ("peers_suspect", u64::from(s.peers_suspect)),
        ("peers_down", u64::from(s.peers_down)),
        ("peers_draining", u64::from(s.peers_draining)),
        ("peers_drained", u64::from(s.peers_drained)),
        ("at_r", s.chunks.saturating_sub(s.under_replicated)),
        ("repair_waiting", s.under_replicated.saturating_sub(s.lost)),
        ("gc_tombstones", s.gc_tombstones),
        ("inodes", s.inodes),
        ("referenced_bytes", s.referenced_bytes),
        ("stored_bytes", s.stored_bytes),
    ] {
        let _ = writeln!(out, "{k}: {v}");
    }
    if let Some(v) = &r.volume {
        let _ = writeln!(out, "replicas: {}", v.replicas);
    }
    let _ = writeln!(out, "surveyed_at: {}", rfc3339(s.surveyed_at));
    let scrubbing: Vec<&ScrubProgress> = r.peers.iter().filter_map(|p| p.usage.scrub.as_ref()).collect();
    let _ = writeln!(
        out,
        "scrub_checked: {}\nscrub_total: {}",
        scrubbing.iter().map(|s| s.checked).sum::<u64>(),
        scrubbing.iter().map(|s| s.total).sum::<u64>()
    );
    for d in &s.dirsvc {
        let _ = writeln!(
            out,
            "dirsvc: {} {} version={} protocol={} started={} uptime={}s",
            d.addr,
            if d.leader { "leader" } else { "follower" },
            d.version,
            d.protocol,
            rfc3339(d.started),
            d.uptime_secs
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<34} {:<22} {:<9} {:>14} {:>14} {:>9} {:<16} {:>9} {:<20} {:>15}",
        "PEER",
        "ADDRESS",
        "STATE",
        "USED",
        "CAPACITY",
        "CHUNKS",
        "HOST/ZONE",
        "HB_AGE",
        "LAST_HEARTBEAT",
        "SCRUB"
    );
    for p in &r.peers {
        let scrub = match &p.usage.scrub {
            Some(sc) if sc.running => format!("{}/{}", sc.checked, sc.total),
            Some(sc) => format!("idle:{}/{}", sc.checked, sc.total),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<34} {:<22} {:<9} {:>14} {:>14} {:>9} {:<16} {:>9} {:<20} {:>15}",
            p.loc.id.to_hex(),
            p.loc.addr,
            state_name(p.state),
            p.usage.used_bytes,
            p.usage.capacity_bytes,
            p.usage.chunks,
            format!("{}/{}", p.labels.host, p.labels.zone),
            format!("{:.1}s", p.heartbeat_age_ms as f64 / 1000.0),
            rfc3339(p.last_heartbeat),
            scrub
        );
    }
    out
}

/// Reads the durability report of the file at `path` (inside a p2pfs
/// mount) from its virtual extended attribute `user.p2pfs.durability`.
///
/// Errors: [`Error::Io`] naming the path: `ENODATA`/`EOPNOTSUPP` when the
/// path is not a regular file on a p2pfs mount, any other `getxattr(2)`
/// failure, or a value that is not a report.
pub fn read_durability(path: &Path) -> Result<DurabilityReport> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Io(format!("{}: path contains a NUL byte", path.display())))?;
    let mut name = DURABILITY_XATTR.to_vec();
    name.push(0);
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: both strings are NUL-terminated and `buf` is valid for
    // `buf.len()` bytes for the duration of the call.
    let n =
        unsafe { libc::getxattr(c_path.as_ptr(), name.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if let Err(missing) = std::fs::symlink_metadata(path) {
            return Err(Error::Io(format!("{}: {missing}", path.display())));
        }
        return Err(Error::Io(match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) | Some(libc::ENOENT) => {
                format!(
                    "{}: not a regular file on a p2pfs mount (it has no user.p2pfs.durability)",
                    path.display()
                )
            }
            _ => format!("{}: cannot read user.p2pfs.durability: {e}", path.display()),
        }));
    }
    buf.truncate(n as usize);
    serde_json::from_slice(&buf)
        .map_err(|e| Error::Io(format!("{}: user.p2pfs.durability is not a report: {e}", path.display())))
}

/// The durability report as text: one summary line, then one line per
/// block (or run of blocks) under R.
pub fn durability_text(path: &Path, r: &DurabilityReport) -> String {
    let pending = r.pending_upload_bytes.map_or_else(|| "unknown (file busy)".to_string(), |b| b.to_string());
    let mut out = format!(
        "{}: ino {} size {} blocks {} stored {} R {} at_r {} under_r {} lost {} inline {} pending_upload_bytes {}\n",
        path.display(),
        r.ino,
        r.size,
        r.blocks,
        r.stored_blocks,
        r.replicas,
        r.at_r,
        r.under_r,
        r.lost,
        r.inline_blocks,
        pending
    );
    for run in r.runs.iter().filter(|b| b.live < r.replicas) {
        let blocks = if run.first == run.last {
            format!("block {}", run.first)
        } else {
            format!("blocks {}-{}", run.first, run.last)
        };
        let chunk = run.chunk.as_deref().map(|c| format!(" chunk {c}")).unwrap_or_default();
        let _ = writeln!(out, "under_r: {blocks} live {}/{}{chunk}", run.live, r.replicas);
    }
    if r.truncated {
        out.push_str("(list of blocks cut short to fit 64 KiB)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(Timestamp { secs: 0, nanos: 0 }), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Timestamp { secs: 951_782_400, nanos: 5 }), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(Timestamp { secs: 1_796_564_201, nanos: 0 }), "2026-12-06T13:36:41Z");
        assert_eq!(rfc3339(Timestamp { secs: -1, nanos: 0 }), "1969-12-31T23:59:59Z");
    }
}
