//! Operability, seen from outside: every process's Prometheus endpoint
//! (dirsvc, each peerd, the mount) scraped and parsed as strict Prometheus
//! text, with counters that move after a write through the mount; and
//! dirsvc's status page rendered in headless Chromium, showing every peer
//! and then a killed peer as down. One cluster for all of it. The last
//! screenshot is kept at `target/test-artifacts/status-page.png`.

use super::tools::output;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::cluster::{bin_dir, ClusterOpts, TestCluster};
use testkit::wait_until;

/// How long dirsvc may take to list a killed peer as down (fast timeouts:
/// down after 2 s).
const DOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on one headless Chromium run.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample: metric name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// A scrape, parsed: every sample's value, and each family's type.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<Series, f64>,
    types: BTreeMap<String, String>,
    raw: String,
}

impl Scrape {
    /// The sum over every series of `name` whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, labels), _)| {
                n == name && want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Whether some series of `name` exists.
    fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| n == name)
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `key="value",…` (the text between the braces), with the
/// format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| format!("label without '=' in {s:?}"))?;
        let key = &rest[..eq];
        if !is_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label value not quoted in {s:?}"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                '\n' => return Err(format!("raw newline in a label value in {s:?}")),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        if out.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice in {s:?}"));
        }
        rest = &rest[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// Parses the Prometheus text exposition format (version 0.0.4), strictly:
/// every line is blank, a `# HELP`/`# TYPE` line or a sample; every sample
/// belongs to a family declared by a `# TYPE` line before it (histogram
/// samples by their `_bucket`/`_sum`/`_count` suffix, buckets with `le`);
/// no series twice; every name starts with `p2pfs_`.
fn parse_prometheus(text: &str) -> Result<Scrape, String> {
    let mut s = Scrape { raw: text.to_string(), ..Scrape::default() };
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(ty)) => {
                    if !is_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(at(format!("unknown type {ty}")));
                    }
                    if s.types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(at("family typed twice".into()));
                    }
                }
                (Some("HELP"), Some(name), _) if is_name(name) => {}
                _ => return Err(at("comment that is neither HELP nor TYPE".into())),
            }
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').ok_or_else(|| at("no closing brace".into()))?;
                let labels = parse_labels(&line[open + 1..close]).map_err(at)?;
                ((line[..open].to_string(), labels), line[close + 1..].trim())
            }
            None => {
                let (name, v) = line.split_once(' ').ok_or_else(|| at("no value".into()))?;
                ((name.to_string(), BTreeMap::new()), v.trim())
            }
        };
        let name = &series.0;
        if !is_name(name) || !name.starts_with("p2pfs_") {
            return Err(at(format!("bad or foreign metric name {name:?}")));
        }
        // A value, optionally followed by a timestamp in milliseconds.
        let mut vs = value.split(' ');
        let v = parse_value(vs.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = vs.next() {
            ts.parse::<i64>().map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if vs.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                let base = name.strip_suffix(suf)?;
                matches!(s.types.get(base).map(String::as_str), Some("histogram" | "summary")).then_some(base)
            })
            .unwrap_or(name);
        if !s.types.contains_key(family) {
            return Err(at(format!("sample of {family}, which no # TYPE line declared before")));
        }
        if name.ends_with("_bucket") && family != name && !series.1.contains_key("le") {
            return Err(at("histogram bucket without le".into()));
        }
        if s.types[family] == "counter" && v < 0.0 {
            return Err(at("negative counter".into()));
        }
        if s.samples.insert(series, v).is_some() {
            return Err(at("series given twice".into()));
        }
    }
    Ok(s)
}

/// `GET path` from `addr` over plain HTTP/1.1; (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("set timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap_or_else(|e| panic!("read the answer of {addr}{path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(body.len(), len, "body length differs from Content-Length");
    (status, body.to_string())
}

/// Scrapes `/metrics` at `addr` (a process named `who`) and parses it.
fn scrape(who: &str, addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{who} /metrics answered {status}: {body}");
    parse_prometheus(&body).unwrap_or_else(|e| panic!("{who} /metrics is not Prometheus text: {e}\n{body}"))
}

/// The address a process wrote to its metrics address file.
fn read_addr(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let addr = text.trim().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "metrics bound to {addr}, not loopback");
    addr
}

/// Headless Chromium with its profile under `work`.
fn chromium(work: &Path) -> Command {
    let mut cmd = Command::new("chromium");
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", work.join("chromium-profile").display()));
    cmd
}

/// The page at `url` as Chromium's DOM after loading it, and how long the
/// run took.
fn render_dom(work: &Path, url: &str) -> (String, Duration) {
    let started = Instant::now();
    let out = output(chromium(work).args(["--dump-dom", url]), CHROMIUM_TIMEOUT);
    assert!(
        out.status.success(),
        "chromium --dump-dom {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), started.elapsed())
}

/// A screenshot of `url` into `png`.
fn screenshot(work: &Path, url: &str, png: &Path) {
    let out = output(
        chromium(work).arg("--window-size=1280,900").arg(format!("--screenshot={}", png.display())).arg(url),
        CHROMIUM_TIMEOUT,
    );
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG");
}

/// The `<tr …>` of peer `id` in the rendered page, or `None`.
fn peer_row<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-peer=\"{id}\""))?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

#[test]
fn every_endpoint_serves_prometheus_text_and_the_status_page_shows_a_peer_going_down() {
    // Chromium is a system package (.ci/run installs it); say so clearly.
    let found = Command::new("chromium").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "this test renders the status page in headless Chromium: install Debian's `chromium` \
         package (.ci/run does)"
    );
    // Build (or refresh) the daemons before the clock starts.
    let _ = bin_dir();
    let started = Instant::now();
    let files = tempfile::tempdir().expect("tempdir for metrics address files");
    let file = |name: &str| files.path().join(format!("{name}.metrics"));
    let flags = |name: &str| -> Vec<String> {
        vec![
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--metrics-addr-file".into(),
            file(name).display().to_string(),
        ]
    };
    let mut opts = ClusterOpts::fast(3, 2);
    let d = flags("dirsvc");
    opts = opts.dirsvc_args(&d.iter().map(String::as_str).collect::<Vec<_>>());
    for i in 0..3 {
        let p = flags(&format!("peerd-{i}"));
        opts = opts.peer_args(i, &p.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let m = flags("mount");
    opts = opts.mount_args(&m.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = TestCluster::start_with(opts);
    c.mount();

    // Every endpoint answers strict Prometheus text.
    let dirsvc = read_addr(&file("dirsvc"));
    let peers: Vec<String> = (0..3).map(|i| read_addr(&file(&format!("peerd-{i}")))).collect();
    let mount = read_addr(&file("mount"));
    let peer_sum = |name: &str, want: &[(&str, &str)]| -> f64 {
        peers.iter().enumerate().map(|(i, a)| scrape(&format!("peerd-{i}"), a).sum(name, want)).sum()
    };
    let d0 = scrape("dirsvc", &dirsvc);
    let m0 = scrape("mount", &mount);
    let puts0 = peer_sum("p2pfs_rpc_requests_total", &[("rpc", "put")]);
    let recv0 = peer_sum("p2pfs_peer_received_bytes_total", &[("rpc", "put")]);
    assert!(d0.has("p2pfs_dirsvc_peers"), "dirsvc has no peer gauges:\n{}", d0.raw);
    assert_eq!(d0.sum("p2pfs_dirsvc_peers", &[("state", "up")]), 3.0, "{}", d0.raw);
    assert_eq!(d0.types.get("p2pfs_rpc_duration_seconds").map(String::as_str), Some("histogram"));

    // A write through the mount moves counters in every process.
    let len = 3usize << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    let path = c.mountpoint().join("observed.bin");
    {
        let mut f = std::fs::File::create(&path).expect("create a file on the mount");
        f.write_all(&data).expect("write");
        f.sync_all().expect("fsync");
    }
    let _ = std::fs::metadata(c.mountpoint().join("no-such-file"));
    let d1 = scrape("dirsvc", &dirsvc);
    let m1 = scrape("mount", &mount);
    let commits = |s: &Scrape| s.sum("p2pfs_rpc_requests_total", &[("rpc", "commit_layout")]);
    assert!(commits(&d1) > commits(&d0), "dirsvc counted no commit_layout:\n{}", d1.raw);
    let not_found = |s: &Scrape| s.sum("p2pfs_rpc_errors_total", &[("rpc", "lookup"), ("kind", "NotFound")]);
    assert!(not_found(&d1) > not_found(&d0), "dirsvc counted no failed lookup by kind:\n{}", d1.raw);
    let uploaded = |s: &Scrape| s.sum("p2pfs_client_uploaded_bytes_total", &[]);
    assert!(
        uploaded(&m1) - uploaded(&m0) >= (2 * len) as f64,
        "the mount uploaded {} bytes for {len} bytes at R = 2:\n{}",
        uploaded(&m1) - uploaded(&m0),
        m1.raw
    );
    assert!(m1.sum("p2pfs_client_peer_request_duration_seconds_count", &[("op", "put")]) >= 6.0);
    let puts1 = peer_sum("p2pfs_rpc_requests_total", &[("rpc", "put")]);
    let recv1 = peer_sum("p2pfs_peer_received_bytes_total", &[("rpc", "put")]);
    assert!(puts1 - puts0 >= 6.0, "peers counted {} puts for 3 blocks at R = 2", puts1 - puts0);
    assert!(recv1 - recv0 >= (2 * len) as f64, "peers counted {} bytes received", recv1 - recv0);
    // Reading it back (a fresh open: the blocks are in the cache) counts
    // cache hits.
    assert_eq!(std::fs::read(&path).expect("read back"), data);
    let m2 = scrape("mount", &mount);
    let cache = |s: &Scrape| {
        s.sum("p2pfs_client_cache_hits_total", &[]) + s.sum("p2pfs_client_cache_misses_total", &[])
    };
    assert!(cache(&m2) > cache(&m1), "reads through the mount moved no cache counter:\n{}", m2.raw);

    // The status page shows every peer up.
    let url = format!("http://{dirsvc}/");
    let work = c.work_dir();
    let (dom, took) = render_dom(&work, &url);
    eprintln!("headless chromium --dump-dom took {took:.2?}");
    let ids: Vec<String> = (0..3).map(|i| c.peer_id(i).to_hex()).collect();
    for (i, id) in ids.iter().enumerate() {
        let row =
            peer_row(&dom, id).unwrap_or_else(|| panic!("the page does not list peer {i} ({id}):\n{dom}"));
        assert!(row.contains(">up<"), "peer {i} is not shown up: {row}");
        assert!(row.contains(&c.peer_addr(i).to_string()), "peer {i}'s address is not shown: {row}");
    }
    assert!(dom.contains("class=\"health ok\""), "a healthy cluster is not shown ok:\n{dom}");

    // Peer 0 dies: once dirsvc marks it down, the page says so.
    c.kill9_peer(0);
    let down = wait_until(
        || {
            let (_, json) = http_get(&dirsvc, "/status.json");
            let v: serde_json::Value = serde_json::from_str(&json).expect("status.json is JSON");
            v["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["id"] == ids[0] && p["state"] == "down"))
        },
        DOWN_TIMEOUT,
    );
    assert!(down.is_some(), "dirsvc did not mark the killed peer down within {DOWN_TIMEOUT:?}");
    let (dom, _) = render_dom(&work, &url);
    let row = peer_row(&dom, &ids[0]).unwrap_or_else(|| panic!("the page lost the dead peer:\n{dom}"));
    assert!(row.contains(">down<"), "the killed peer is not shown down: {row}");
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert!(peer_row(&dom, id).is_some_and(|r| r.contains(">up<")), "peer {i} is not shown up");
    }
    assert!(!dom.contains("class=\"health ok\""), "a cluster with a dead peer is shown ok:\n{dom}");
    let d2 = scrape("dirsvc", &dirsvc);
    assert_eq!(d2.sum("p2pfs_dirsvc_peers", &[("state", "down")]), 1.0, "{}", d2.raw);

    // Keep the picture: in the test's work dir and under target/.
    let png = work.join("status-page.png");
    screenshot(&work, &url, &png);
    let artifacts: PathBuf =
        bin_dir().parent().expect("the binaries sit in target/<profile>").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    std::fs::copy(&png, artifacts.join("status-page.png")).expect("keep the screenshot");
    eprintln!("status page screenshot: {}", artifacts.join("status-page.png").display());
    eprintln!("observability test took {:.1?}", started.elapsed());
}

#[test]
fn the_prometheus_parser_refuses_what_prometheus_would() {
    let good = "# HELP p2pfs_x_total x\n# TYPE p2pfs_x_total counter\np2pfs_x_total{a=\"1\",b=\"q\\\"\"} 3\n\n\
                # TYPE p2pfs_h_seconds histogram\np2pfs_h_seconds_bucket{le=\"+Inf\"} 1\np2pfs_h_seconds_sum 0.5\n\
                p2pfs_h_seconds_count 1\n";
    let s = parse_prometheus(good).unwrap();
    assert_eq!(s.sum("p2pfs_x_total", &[("b", "q\"")]), 3.0);
    for bad in [
        "p2pfs_x 1\n",                                  // no TYPE
        "# TYPE p2pfs_x gauge\np2pfs_x{a=1} 1\n",       // unquoted label
        "# TYPE p2pfs_x gauge\np2pfs_x one\n",          // not a number
        "# TYPE p2pfs_x gauge\np2pfs_x 1\np2pfs_x 2\n", // series twice
        "# TYPE p2pfs_x counter\np2pfs_x -1\n",         // negative counter
        "# TYPE other gauge\nother 1\n",                // foreign name
        "# TYPE p2pfs_h histogram\np2pfs_h_bucket 1\n", // bucket without le
        "# what\n",                                     // stray comment
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}
