//! dirsvc's read-only status page (`/`, `/status.json`) and its Prometheus
//! gauges, served on the process's metrics address
//! ([`DirsvcConfig::metrics_listen`](crate::DirsvcConfig::metrics_listen)).
//!
//! Both are built from dirsvc's own in-process state, the same data the
//! `cluster_status` and `list_peers` RPCs answer from: the peer registry,
//! the repair and GC counters, and the repair worker's last survey of the
//! chunk index (at most one repair interval old; a page refresh never
//! walks the index). The page is server-rendered HTML with inline CSS and
//! no script, reloads itself every [`REFRESH_SECS`] seconds, and escapes
//! every value it shows.

use crate::shared::Shared;
use common::http::{escape_html, Handler, Request, Response};
use common::rpc::dir::PeerState;
use common::telemetry::Refresh;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 3;

/// The whole status, as `/status.json` serves it and the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// `ok` (every chunk at R replicas, every peer up, draining or
    /// drained), `degraded` (a chunk under R, or a peer suspect or down),
    /// `lost` (a referenced chunk has no reachable replica), or `unknown`
    /// (no volume yet, or no survey of the chunk index yet).
    pub health: &'static str,
    /// When this view was made, seconds since the Unix epoch.
    pub generated_unix_secs: u64,
    /// The volume, once initialized.
    pub volume: Option<VolumeView>,
    /// Replication from the last survey; `None` before the first.
    pub replication: Option<ReplicationView>,
    /// Repair work.
    pub repair: RepairView,
    /// Garbage-collection backlog.
    pub gc: GcView,
    /// Totals over the peers that are not down.
    pub capacity: CapacityView,
    /// Peers per state.
    pub peers_by_state: StateCounts,
    /// Every registered peer, in id order.
    pub peers: Vec<PeerView>,
}

/// The volume's settings.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeView {
    /// Volume id, hex.
    pub id: String,
    /// Replication factor R.
    pub replicas: u32,
    /// Block size in bytes.
    pub block_size: u32,
}

/// Replication health of the referenced chunks.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationView {
    /// Referenced chunks.
    pub chunks: u64,
    /// Chunks with R good replicas.
    pub at_r: u64,
    /// Chunks with fewer (lost ones included).
    pub under_replicated: u64,
    /// Chunks with no reachable replica.
    pub lost: u64,
    /// Age of the survey these counts come from, in seconds.
    pub survey_age_secs: f64,
}

/// Repair progress since dirsvc started.
#[derive(Clone, Debug, Serialize)]
pub struct RepairView {
    /// Peer-to-peer copies running now.
    pub in_flight: u32,
    /// Copies completed.
    pub repaired_chunks_total: u64,
    /// Bytes copied.
    pub repaired_bytes_total: u64,
}

/// Garbage-collection backlog and progress.
#[derive(Clone, Debug, Serialize)]
pub struct GcView {
    /// Unreferenced chunks waiting out the grace period.
    pub pending_chunks: u64,
    /// Replica deletions acknowledged by peers since dirsvc started.
    pub deleted_total: u64,
}

/// Capacity in bytes over the peers that take new data (not down, not
/// draining), each shared disk counted once.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityView {
    /// Bytes usable for chunks: used plus free (so a disk shared by
    /// several peers, or partly used by other programs, is not counted
    /// at its full size once per peer).
    pub capacity_bytes: u64,
    /// Bytes used by chunks.
    pub used_bytes: u64,
    /// Bytes free for chunks.
    pub free_bytes: u64,
    /// Peers counted.
    pub peers: u32,
}

/// Peers per state.
#[derive(Clone, Debug, Serialize)]
pub struct StateCounts {
    /// Heartbeat on time.
    pub up: u32,
    /// Heartbeat late.
    pub suspect: u32,
    /// Silent past the down timeout.
    pub down: u32,
    /// Being drained by an operator.
    pub draining: u32,
    /// Drained: safe to stop.
    pub drained: u32,
}

/// One peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    /// Peer id, hex.
    pub id: String,
    /// Address it serves on.
    pub addr: String,
    /// `up`, `suspect`, `down`, `draining` or `drained`.
    pub state: &'static str,
    /// Host label (empty: unknown).
    pub host: String,
    /// Zone label (empty: unknown).
    pub zone: String,
    /// Capacity offered, bytes.
    pub capacity_bytes: u64,
    /// Bytes used by its chunks.
    pub used_bytes: u64,
    /// Bytes free for chunks.
    pub free_bytes: u64,
    /// Chunks it reports storing.
    pub chunks: u64,
    /// Replicas the chunk index records on it (last survey).
    pub indexed_chunks: u64,
    /// Seconds since its last heartbeat.
    pub last_heartbeat_age_secs: f64,
}

/// The lower-case name of a peer state.
pub fn state_name(s: PeerState) -> &'static str {
    s.as_str()
}

/// Gathers the view from `shared` (one blocking read of the GC table).
pub(crate) async fn gather(shared: &Arc<Shared>) -> ClusterView {
    let now = SystemTime::now();
    let (list, counts, (used, free, live)) = {
        let peers = shared.peers();
        (peers.list(), peers.state_counts(), peers.live_totals())
    };
    let volume = shared.store.volume_info().ok().map(|v| VolumeView {
        id: v.id.to_hex(),
        replicas: v.replicas,
        block_size: v.block_size,
    });
    let gc_pending = shared.blocking(|s| s.unreferenced_count()).await.unwrap_or(0);
    let replication = shared.stats.last_survey().filter(|_| volume.is_some()).map(|s| ReplicationView {
        chunks: s.chunks,
        at_r: s.chunks.saturating_sub(s.under_replicated),
        under_replicated: s.under_replicated,
        lost: s.lost,
        survey_age_secs: s.at.elapsed().as_secs_f64(),
    });
    let peers: Vec<PeerView> = list
        .into_iter()
        .map(|p| PeerView {
            id: p.loc.id.to_hex(),
            addr: p.loc.addr,
            state: state_name(p.state),
            host: p.labels.host,
            zone: p.labels.zone,
            capacity_bytes: p.usage.capacity_bytes,
            used_bytes: p.usage.used_bytes,
            free_bytes: p.usage.free_bytes,
            chunks: p.usage.chunks,
            indexed_chunks: p.indexed_chunks,
            last_heartbeat_age_secs: p
                .last_heartbeat
                .to_system_time()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        })
        .collect();
    let peers_by_state = StateCounts {
        up: counts[0],
        suspect: counts[1],
        down: counts[2],
        draining: counts[3],
        drained: counts[4],
    };
    let health = match &replication {
        None => "unknown",
        Some(r) if r.lost > 0 => "lost",
        Some(r) if r.under_replicated > 0 || counts[1] > 0 || counts[2] > 0 => "degraded",
        Some(_) => "ok",
    };
    let stats = &shared.stats;
    ClusterView {
        health,
        generated_unix_secs: now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        volume,
        replication,
        repair: RepairView {
            in_flight: stats.repairs_in_flight.load(Ordering::Relaxed),
            repaired_chunks_total: stats.repaired_total.load(Ordering::Relaxed),
            repaired_bytes_total: stats.repaired_bytes_total.load(Ordering::Relaxed),
        },
        gc: GcView {
            pending_chunks: gc_pending,
            deleted_total: stats.gc_deleted_total.load(Ordering::Relaxed),
        },
        capacity: CapacityView {
            capacity_bytes: used.saturating_add(free),
            used_bytes: used,
            free_bytes: free,
            peers: live,
        },
        peers_by_state,
        peers,
    }
}

/// Sets dirsvc's gauges (docs/METRICS.md) from `v`.
fn set_gauges(v: &ClusterView) {
    use metrics::{counter, gauge};
    let health = match v.health {
        "ok" => 0.0,
        "degraded" => 1.0,
        "lost" => 2.0,
        _ => -1.0,
    };
    gauge!("p2pfs_dirsvc_health").set(health);
    if let Some(r) = &v.replication {
        gauge!("p2pfs_dirsvc_chunks").set(r.chunks as f64);
        gauge!("p2pfs_dirsvc_chunks_under_replicated").set(r.under_replicated as f64);
        gauge!("p2pfs_dirsvc_chunks_lost").set(r.lost as f64);
        gauge!("p2pfs_dirsvc_survey_age_seconds").set(r.survey_age_secs);
    }
    let s = &v.peers_by_state;
    for (state, n) in [
        ("up", s.up),
        ("suspect", s.suspect),
        ("down", s.down),
        ("draining", s.draining),
        ("drained", s.drained),
    ] {
        gauge!("p2pfs_dirsvc_peers", "state" => state).set(f64::from(n));
    }
    gauge!("p2pfs_dirsvc_capacity_bytes").set(v.capacity.capacity_bytes as f64);
    gauge!("p2pfs_dirsvc_used_bytes").set(v.capacity.used_bytes as f64);
    gauge!("p2pfs_dirsvc_free_bytes").set(v.capacity.free_bytes as f64);
    gauge!("p2pfs_dirsvc_repairs_in_flight").set(f64::from(v.repair.in_flight));
    counter!("p2pfs_dirsvc_repaired_chunks_total").absolute(v.repair.repaired_chunks_total);
    counter!("p2pfs_dirsvc_repaired_bytes_total").absolute(v.repair.repaired_bytes_total);
    gauge!("p2pfs_dirsvc_gc_pending_chunks").set(v.gc.pending_chunks as f64);
    counter!("p2pfs_dirsvc_gc_deleted_chunks_total").absolute(v.gc.deleted_total);
}

/// The `/metrics` refresh: dirsvc's gauges from its current state.
pub(crate) fn refresh(current: crate::Current) -> Refresh {
    Arc::new(move || {
        let shared = crate::current_server(&current).shared().clone();
        Box::pin(async move { set_gauges(&gather(&shared).await) })
    })
}

/// The pages: `/` (HTML) and `/status.json`; anything else is 404.
pub(crate) fn pages(current: crate::Current) -> Handler {
    Arc::new(move |req: Request| {
        let shared = crate::current_server(&current).shared().clone();
        Box::pin(async move {
            match req.path.as_str() {
                "/" | "/index.html" => {
                    Response::ok("text/html; charset=utf-8", render(&gather(&shared).await))
                }
                "/status.json" => match serde_json::to_vec_pretty(&gather(&shared).await) {
                    Ok(body) => Response::ok("application/json", body),
                    Err(e) => Response::text(500, format!("cannot encode the status: {e}\n")),
                },
                _ => Response::not_found(),
            }
        })
    })
}

/// Bytes in binary units, e.g. `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .5em}h2{font-size:1.1em;margin:1.2em 0 .4em}\
.health{display:inline-block;padding:.3em .8em;border-radius:4px;font-weight:bold;color:#fff}\
.ok{background:#2e7d32}.degraded{background:#ef6c00}.lost{background:#c62828}.unknown{background:#757575}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}\
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.state-up{color:#2e7d32;font-weight:bold}.state-suspect{color:#ef6c00;font-weight:bold}\
.state-down{color:#c62828;font-weight:bold}.state-draining,.state-drained{color:#1565c0;font-weight:bold}\
.grid{display:flex;gap:2em;flex-wrap:wrap}small{color:#666}";

/// The HTML page for `v`. Every value is escaped.
pub fn render(v: &ClusterView) -> String {
    let e = escape_html;
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>p2pfs status: {health}</title><style>{CSS}</style></head><body>\
         <h1>p2pfs cluster</h1><p>Health: <span id=\"health\" class=\"health {health}\">{health}</span> \
         <small>refreshes every {REFRESH_SECS} s</small></p>",
        health = e(v.health)
    );
    h.push_str("<div class=\"grid\"><div><h2>Volume</h2><table>");
    match &v.volume {
        Some(vol) => {
            let _ = write!(
                h,
                "<tr><th>id</th><td>{}</td></tr><tr><th>replicas (R)</th><td class=\"n\">{}</td></tr>\
                 <tr><th>block size</th><td class=\"n\">{}</td></tr>",
                e(&vol.id),
                vol.replicas,
                e(&human_bytes(u64::from(vol.block_size)))
            );
        }
        None => h.push_str("<tr><td>no volume yet</td></tr>"),
    }
    h.push_str("</table></div><div><h2>Replication</h2><table id=\"replication\">");
    match &v.replication {
        Some(r) => {
            let _ = write!(
                h,
                "<tr><th>chunks</th><td class=\"n\">{}</td></tr><tr><th>at R</th><td class=\"n\">{}</td></tr>\
                 <tr><th>under R</th><td class=\"n\" id=\"under-replicated\">{}</td></tr>\
                 <tr><th>lost</th><td class=\"n\" id=\"lost\">{}</td></tr>\
                 <tr><th>surveyed</th><td class=\"n\">{:.1} s ago</td></tr>",
                r.chunks, r.at_r, r.under_replicated, r.lost, r.survey_age_secs
            );
        }
        None => h.push_str("<tr><td>no survey yet</td></tr>"),
    }
    let _ = write!(
        h,
        "</table></div><div><h2>Repair and GC</h2><table>\
         <tr><th>repairs in flight</th><td class=\"n\">{}</td></tr>\
         <tr><th>chunks repaired</th><td class=\"n\">{}</td></tr>\
         <tr><th>bytes repaired</th><td class=\"n\">{}</td></tr>\
         <tr><th>GC pending chunks</th><td class=\"n\">{}</td></tr>\
         <tr><th>GC deleted replicas</th><td class=\"n\">{}</td></tr></table></div>",
        v.repair.in_flight,
        v.repair.repaired_chunks_total,
        e(&human_bytes(v.repair.repaired_bytes_total)),
        v.gc.pending_chunks,
        v.gc.deleted_total
    );
    let s = &v.peers_by_state;
    let _ = write!(
        h,
        "<div><h2>Capacity</h2><table>\
         <tr><th>capacity</th><td class=\"n\">{}</td></tr><tr><th>used</th><td class=\"n\">{}</td></tr>\
         <tr><th>free</th><td class=\"n\">{}</td></tr>\
         <tr><th>peers</th><td>{} up, {} suspect, {} down, {} draining, {} drained</td></tr></table></div></div>",
        e(&human_bytes(v.capacity.capacity_bytes)),
        e(&human_bytes(v.capacity.used_bytes)),
        e(&human_bytes(v.capacity.free_bytes)),
        s.up,
        s.suspect,
        s.down,
        s.draining,
        s.drained
    );
    h.push_str(
        "<h2>Peers</h2><table id=\"peers\"><tr><th>peer</th><th>address</th><th>state</th><th>host</th>\
         <th>zone</th><th>capacity</th><th>used</th><th>chunks</th><th>indexed</th><th>last heartbeat</th></tr>",
    );
    for p in &v.peers {
        let _ = write!(
            h,
            "<tr class=\"peer\" data-peer=\"{id}\"><td><code>{id}</code></td><td>{addr}</td>\
             <td class=\"state state-{state}\">{state}</td><td>{host}</td><td>{zone}</td>\
             <td class=\"n\">{cap}</td><td class=\"n\">{used}</td><td class=\"n\">{chunks}</td>\
             <td class=\"n\">{indexed}</td><td class=\"n\">{age:.1} s ago</td></tr>",
            id = e(&p.id),
            addr = e(&p.addr),
            state = e(p.state),
            host = e(&p.host),
            zone = e(&p.zone),
            cap = e(&human_bytes(p.capacity_bytes)),
            used = e(&human_bytes(p.used_bytes)),
            chunks = p.chunks,
            indexed = p.indexed_chunks,
            age = p.last_heartbeat_age_secs
        );
    }
    if v.peers.is_empty() {
        h.push_str("<tr><td colspan=\"10\">no peer registered</td></tr>");
    }
    h.push_str(
        "</table><p><small>Read-only. Machine-readable: <a href=\"/status.json\">/status.json</a>, \
                <a href=\"/metrics\">/metrics</a>.</small></p></body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(host: &str) -> ClusterView {
        ClusterView {
            health: "degraded",
            generated_unix_secs: 0,
            volume: None,
            replication: Some(ReplicationView {
                chunks: 10,
                at_r: 7,
                under_replicated: 3,
                lost: 0,
                survey_age_secs: 0.5,
            }),
            repair: RepairView { in_flight: 1, repaired_chunks_total: 2, repaired_bytes_total: 3 << 20 },
            gc: GcView { pending_chunks: 4, deleted_total: 5 },
            capacity: CapacityView { capacity_bytes: 1 << 30, used_bytes: 0, free_bytes: 1 << 30, peers: 1 },
            peers_by_state: StateCounts { up: 0, suspect: 0, down: 1, draining: 0, drained: 0 },
            peers: vec![PeerView {
                id: "ab".into(),
                addr: "127.0.0.1:1".into(),
                state: "down",
                host: host.into(),
                zone: String::new(),
                capacity_bytes: 1 << 30,
                used_bytes: 0,
                free_bytes: 1 << 30,
                chunks: 0,
                indexed_chunks: 0,
                last_heartbeat_age_secs: 12.0,
            }],
        }
    }

    #[test]
    fn the_page_escapes_labels_and_shows_state_and_counts() {
        let html = render(&view("<script>alert(1)</script>"));
        assert!(!html.contains("<script>"), "a label must not become markup: {html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("state-down\">down</td>"));
        assert!(html.contains("id=\"under-replicated\">3<"));
        assert!(html.contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
