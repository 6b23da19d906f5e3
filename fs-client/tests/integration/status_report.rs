//! `fs-client status` as an operator and a script read it: the cluster
//! report (`--json` and text) and the per-file durability report (the
//! virtual extended attribute `user.p2pfs.durability`, and `fs-client
//! status PATH`), before a peer dies, while it is down and after repair.
//!
//! One cluster (3 peers, R = 2, fast down-marking) serves every check.
//! Repair is held to 256 KiB/s so that a 1 MiB chunk takes about 4 s to
//! copy: the state "peer down, nothing repaired yet" lasts long enough to
//! be observed on a loaded machine.

use super::tools::{chunk_holders, output, Pattern};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::cluster::{ClusterOpts, Status, TestCluster};

/// Replication factor of the volume.
const R: u64 = 2;

/// Bound on every wait (down-marking, repair).
const WAIT: Duration = Duration::from_secs(40);

/// The report of `path` through `fs-client status --json PATH`.
fn cli_report(c: &TestCluster, path: &Path) -> Value {
    let out = output(c.fs_client().args(["status", "--json"]).arg(path), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "fs-client status --json {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout))
}

/// The report of `path` through `getfattr -n user.p2pfs.durability`.
fn getfattr_report(path: &Path) -> Value {
    let out = output(
        Command::new("getfattr").args(["--only-values", "-n", "user.p2pfs.durability"]).arg(path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "getfattr {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout))
}

/// `(block index, chunk id, live replicas)` of each block of a report.
fn blocks(report: &Value) -> Vec<(u64, String, u64)> {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|b| {
            assert_eq!(b["first"], b["last"], "a small file is reported block by block: {report}");
            (
                b["first"].as_u64().unwrap(),
                b["chunk"].as_str().unwrap().to_string(),
                b["live"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// Polls `fs-client status --json` until `pred` holds; returns that
/// status. Panics after [`WAIT`] with `what` and the last status.
fn wait_for(c: &TestCluster, what: &str, mut pred: impl FnMut(&Status) -> bool) -> Status {
    let mut seen = None;
    c.wait_status(what, WAIT, |st| {
        let ok = pred(st);
        if ok {
            seen = Some(st.clone());
        }
        ok
    });
    seen.expect("wait_status returned, so the predicate held")
}

/// The peer with id `id` in a status.
fn peer<'a>(st: &'a Status, id: &str) -> &'a Value {
    st.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no peer {id}: {}", st.raw))
}

#[test]
fn status_and_durability_follow_a_killed_peer_through_repair() {
    // No linger: the small file removed below must take its chunk with it
    // at once, so the repair counts below are the big file's alone.
    let opts = ClusterOpts::fast(3, R as u32).dirsvc_args(&[
        "--repair-bandwidth",
        "262144",
        "--unlinked-linger-ms",
        "0",
    ]);
    let mut c = TestCluster::start_with(opts);
    c.mount();
    let mnt = c.mountpoint();
    let file = mnt.join("three-blocks.bin");
    std::fs::write(&file, Pattern::bytes(11, 3 << 20)).expect("write the file");
    let st = wait_for(&c, "3 chunks at R, counted in the peers' usage", |st| {
        let used: u64 =
            st.json["peers"].as_array().map_or(0, |ps| ps.iter().map(|p| num(p, "used_bytes")).sum());
        st.get("chunks") == 3 && st.fully_replicated() && used >= 2 * (3 << 20)
    });

    // The cluster report: one leader dirsvc, every peer up with its usage,
    // heartbeat and scrub progress, totals counted.
    let d = &st.json["dirsvc"];
    assert_eq!(d.as_array().map(Vec::len), Some(1), "{}", st.raw);
    assert_eq!(d[0]["addr"], c.dirsvc_addr().to_string());
    assert_eq!(d[0]["leader"], true);
    assert!(
        d[0]["version"].as_str().is_some_and(|v| !v.is_empty()) && d[0]["uptime_secs"].is_u64(),
        "{}",
        st.raw
    );
    assert_eq!(st.peers.len(), 3);
    for p in st.json["peers"].as_array().unwrap() {
        assert_eq!(p["state"], "up", "{}", st.raw);
        assert!(
            num(p, "capacity_bytes") > 0 && p["last_heartbeat"].as_str().is_some_and(|t| t.ends_with('Z'))
        );
        assert!(p["heartbeat_age_secs"].as_f64().is_some_and(|a| a < 5.0), "{p}");
        assert!(p["scrub"].is_object(), "scrub is on by default, so it reports: {p}");
    }
    assert!(num(&st.json["totals"], "stored_bytes") >= 2 * (3 << 20), "{}", st.raw);
    assert_eq!(num(&st.json["replication"], "at_r"), 3);
    assert_eq!(st.json["replication"]["replicas"], R);

    // The file's report, both ways: 3 blocks, each on R live replicas.
    let t = Instant::now();
    let healthy = cli_report(&c, &file);
    assert_eq!(getfattr_report(&file), healthy, "getfattr and fs-client status PATH agree");
    assert_eq!(
        (num(&healthy, "size"), num(&healthy, "blocks"), num(&healthy, "stored_blocks")),
        (3 << 20, 3, 3)
    );
    assert_eq!((num(&healthy, "at_r"), num(&healthy, "under_r"), num(&healthy, "lost")), (3, 0, 0));
    assert_eq!(num(&healthy, "pending_upload_bytes"), 0);
    let chunks = blocks(&healthy);
    assert!(chunks.iter().all(|(_, _, live)| *live == R), "{healthy}");
    eprintln!("durability report read two ways in {:?}", t.elapsed());

    // Virtual: not listed, not settable, not removable.
    let listed = output(Command::new("getfattr").args(["-d", "-m", "-"]).arg(&file), Duration::from_secs(30));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("p2pfs"), "listed: {listed:?}");
    for args in [&["-n", "user.p2pfs.durability", "-v", "x"][..], &["-x", "user.p2pfs.durability"]] {
        let out = output(Command::new("setfattr").args(args).arg(&file), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Operation not permitted"), "setfattr {args:?}: {err}");
    }

    // Bytes a handle holds unflushed count as waiting for upload, and stop
    // counting once it closes.
    let open = mnt.join("held-open.bin");
    let script = "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'x' * 100000)\nf.flush()\nprint('written', flush=True)\nsys.stdin.readline()\nf.close()\n";
    let mut py = Command::new("python3")
        .args(["-c", script])
        .arg(&open)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap()).read_line(&mut line).expect("python3 output");
    assert_eq!(line.trim(), "written");
    let pending = getfattr_report(&open);
    assert_eq!(num(&pending, "pending_upload_bytes"), 100_000, "{pending}");
    assert_eq!(num(&cli_report(&c, &open), "pending_upload_bytes"), 100_000);
    py.stdin.take().unwrap().write_all(b"close\n").expect("tell python3 to close");
    assert!(py.wait().expect("python3 exits").success());
    let closed = getfattr_report(&open);
    assert_eq!((num(&closed, "pending_upload_bytes"), num(&closed, "size")), (0, 100_000), "{closed}");
    // Its small chunk would be copied in a blink: out of the way.
    std::fs::remove_file(&open).expect("rm");

    // Kill the peer that holds the most of the file's chunks (at least 2
    // of its 3).
    let holders = chunk_holders(&c);
    let file_chunks: BTreeSet<&str> = chunks.iter().map(|(_, id, _)| id.as_str()).collect();
    let victim = (0..3)
        .max_by_key(|&i| {
            file_chunks.iter().filter(|id| holders.get(**id).is_some_and(|h| h.contains(&i))).count()
        })
        .unwrap();
    let lost_replica: BTreeSet<&str> =
        file_chunks.iter().copied().filter(|id| holders[*id].contains(&victim)).collect();
    assert!(lost_replica.len() >= 2, "holders {holders:?}");
    let victim_id = c.peer_id(victim).to_hex();
    let repaired_before = c.status().get("repaired_total");
    c.kill9_peer(victim);
    let t = Instant::now();
    let down = wait_for(&c, "the killed peer is down", |st| peer(st, &victim_id)["state"] == "down");
    eprintln!("peer down in status after {:?}", t.elapsed());
    assert_eq!(down.get("repaired_total"), repaired_before, "nothing repaired yet: {}", down.raw);
    assert_eq!(down.get("under_replicated"), lost_replica.len() as u64, "{}", down.raw);
    assert_eq!(down.get("lost"), 0);
    assert_eq!(down.get("peers_down"), 1);
    let addr = c.dirsvc_addr().to_string();
    let text = output(c.fs_client().args(["status", "--dirsvc", &addr]), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("\npeers_down: 1\n") && text.contains("\nPEER "), "text status: {text}");

    // The file's report while the peer is down: its blocks there at R - 1.
    let degraded = cli_report(&c, &file);
    assert_eq!(getfattr_report(&file)["runs"], degraded["runs"]);
    for (index, id, live) in blocks(&degraded) {
        let want = if lost_replica.contains(id.as_str()) { R - 1 } else { R };
        assert_eq!(live, want, "block {index} ({id}): {degraded}");
    }
    assert_eq!(num(&degraded, "under_r"), lost_replica.len() as u64);
    assert_eq!(num(&degraded, "lost"), 0);
    assert!(
        repaired_before == c.status().get("repaired_total"),
        "the degraded report was read before any repair"
    );
    let text = output(c.fs_client().arg("status").arg(&file), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("under_r: block")).count(),
        lost_replica.len(),
        "{text}"
    );

    // Repair brings every chunk back to R; the report follows.
    let t = Instant::now();
    let after =
        wait_for(&c, "repair restores R", |st| st.fully_replicated() && st.get("repairs_in_flight") == 0);
    eprintln!("repaired in {:?}", t.elapsed());
    assert_eq!(peer(&after, &victim_id)["state"], "down");
    assert_eq!(after.get("repaired_total") - repaired_before, lost_replica.len() as u64, "{}", after.raw);
    let repaired = getfattr_report(&file);
    assert_eq!((num(&repaired, "at_r"), num(&repaired, "under_r")), (3, 0), "{repaired}");
    assert!(blocks(&repaired).iter().all(|(_, _, live)| *live == R));
    assert_eq!(cli_report(&c, &file)["at_r"], 3);
    eprintln!("status_report: {:?} in all", c.elapsed());
}
