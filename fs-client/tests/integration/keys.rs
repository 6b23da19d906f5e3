//! Keys are never replaced. The bug this pins: with `identity.txt` missing
//! from an existing state directory, `scripts/up.sh` generated a fresh
//! identity, then failed to open the volume with it ("No matching keys
//! found") and left the useless key where the real one belongs, so that
//! `fs-client keygen` refused to put the restored one back. Now up.sh, mount,
//! init and keygen ask dirsvc first and say which key the volume is wrapped
//! to, and no new key is written next to an existing volume.

use super::scripted::Scripted;
use super::tools::output;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use testkit::cluster::{bin_dir, hermetic, mount_entry, TestCluster};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The `age1…` recipient of the X25519 identity in `file`, derived from
/// the secret key itself (not from the `# public key:` comment).
fn recipient_of(file: &Path) -> String {
    let text = fs::read_to_string(file).expect("read identity file");
    let line =
        text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-1")).expect("an X25519 identity in the file");
    let id: age::x25519::Identity = line.parse().expect("a valid age identity");
    id.to_public().to_string()
}

/// `fs-client volume --json` against `dirsvc` with the TLS identity in
/// `tls_dir`, parsed.
fn volume_json(fs_client: &Path, tls_dir: &Path, dirsvc: &str) -> serde_json::Value {
    let mut cmd = Command::new(fs_client);
    hermetic(&mut cmd);
    cmd.arg("--tls-dir").arg(tls_dir);
    let out = output(cmd.args(["volume", "--json", "--dirsvc", dirsvc]), CLI_TIMEOUT);
    assert!(out.status.success(), "fs-client volume --json failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("fs-client volume --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn up_sh_refuses_to_replace_a_missing_identity_of_an_existing_volume() {
    let u = Scripted::new(1, 1);
    let out = u.up();
    let (o, e) = text(&out);
    assert!(out.status.success(), "first scripts/up.sh failed ({}):\n{o}\n{e}", out.status);
    let recipient = recipient_of(&u.identity());
    let v = volume_json(&bin_dir().join("fs-client"), &u.state().join("admin-tls"), &u.dirsvc_addr());
    assert_eq!(v["volume"]["recipients"], serde_json::json!([recipient]), "{v}");

    let out = u.down();
    assert!(out.status.success(), "scripts/down.sh failed: {:?}", text(&out));
    fs::remove_file(u.identity()).expect("remove identity.txt");
    let before = listing(&u.state());

    let out = u.up();
    let (o, e) = text(&out);
    assert!(!out.status.success(), "up.sh succeeded without the volume's identity:\n{o}\n{e}");
    assert!(e.contains("the volume exists and is wrapped to"), "stderr:\n{e}");
    assert!(e.contains(&recipient), "stderr should name the volume's key {recipient}:\n{e}");
    assert!(
        e.contains(&format!("restore {} from your backup", u.identity().display())),
        "stderr should name the full path of identity.txt:\n{e}"
    );
    assert!(!e.contains("No matching keys"), "up.sh still tried a fresh key:\n{e}");
    assert!(u.identity().symlink_metadata().is_err(), "up.sh created {}", u.identity().display());
    // Beyond the daemons' own files (PID files, logs, addresses, their
    // data), nothing new: no key of any name.
    let new: Vec<_> = listing(&u.state()).into_iter().filter(|p| !before.contains(p)).collect();
    let daemons = ["pids/", "logs/", "run/", "dirsvc/", "peerd-"];
    assert!(new.iter().all(|p| daemons.iter().any(|d| p.starts_with(d))), "up.sh created {new:?}");
}

/// Every file under `dir`, relative to it.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn mount_and_init_with_a_wrong_or_missing_identity_name_the_volume_key() {
    let c = TestCluster::start(1, 1);
    let addr = c.dirsvc_addr().to_string();
    let ours = recipient_of(&c.identity_file());
    let vol = output(c.fs_client().args(["volume", "--dirsvc", &addr]), CLI_TIMEOUT);
    let vol_id = String::from_utf8_lossy(&vol.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("volume: ").map(str::to_string))
        .expect("fs-client volume prints `volume: <id>`");

    let wrong = c.work_dir().join("wrong-identity.txt");
    let out = output(c.fs_client().arg("keygen").arg("-o").arg(&wrong), CLI_TIMEOUT);
    assert!(out.status.success(), "keygen outside a state directory failed: {:?}", text(&out));
    let theirs = recipient_of(&wrong);

    let out = output(
        c.fs_client().args(["mount", "--dirsvc", &addr, "-i"]).arg(&wrong).arg(c.mountpoint()),
        CLI_TIMEOUT,
    );
    let (_, e) = text(&out);
    assert!(!out.status.success(), "mount with a wrong identity succeeded");
    assert!(mount_entry(&c.mountpoint()).is_none(), "a mount appeared");
    let want = format!(
        "the volume {vol_id} exists and is wrapped to {ours}; this identity is {theirs}; restore {} from your backup",
        wrong.display()
    );
    assert!(e.contains(&want), "mount with a wrong identity should say\n  {want}\nstderr:\n{e}");

    // init --if-missing used to report "already exists" and succeed, so the
    // mount that followed failed instead.
    let out = output(
        c.fs_client().args(["init", "--if-missing", "--dirsvc", &addr, "-i"]).arg(&wrong),
        CLI_TIMEOUT,
    );
    let (_, e) = text(&out);
    assert!(!out.status.success(), "init --if-missing accepted an identity that cannot open the volume");
    assert!(e.contains(&want), "init --if-missing should say\n  {want}\nstderr:\n{e}");

    let missing = c.work_dir().join("missing-identity.txt");
    for verb in ["mount", "init"] {
        let mut cmd = c.fs_client();
        cmd.args([verb, "--dirsvc", &addr, "-i"]).arg(&missing);
        if verb == "mount" {
            cmd.arg(c.mountpoint());
        }
        let out = output(&mut cmd, CLI_TIMEOUT);
        let (_, e) = text(&out);
        assert!(!out.status.success(), "{verb} without an identity file succeeded");
        assert!(e.contains(&format!("the volume {vol_id} exists and is wrapped to {ours};")), "{verb}: {e}");
        assert!(e.contains(&format!("restore {} from your backup", missing.display())), "{verb}: {e}");
        assert!(missing.symlink_metadata().is_err(), "{verb} created {}", missing.display());
    }
}

#[test]
fn keygen_refuses_a_state_directory_that_holds_a_volume() {
    let mut c = TestCluster::start(1, 1);
    let ours = recipient_of(&c.identity_file());
    // The harness's tempdir is laid out like up.sh's state directory:
    // run/dirsvc.addr, dirsvc/dirsvc.redb, identity.txt.
    let state = c.identity_file().parent().expect("identity has a parent").to_path_buf();
    assert!(state.join("run/dirsvc.addr").is_file() && state.join("dirsvc/dirsvc.redb").is_file());
    let fresh = state.join("new-identity.txt");

    let out = output(c.fs_client().arg("keygen").arg("-o").arg(&fresh), CLI_TIMEOUT);
    let (o, e) = text(&out);
    assert!(!out.status.success(), "keygen wrote a new key next to a volume: {o}");
    assert!(e.contains(&format!("exists and is wrapped to {ours};")), "stderr:\n{e}");
    assert!(e.contains(&format!("restore {} from your backup", fresh.display())), "stderr:\n{e}");
    assert!(fresh.symlink_metadata().is_err(), "keygen created {}", fresh.display());

    // dirsvc stopped: its database alone is enough to refuse.
    c.stop_all();
    let out = output(c.fs_client().arg("keygen").arg("-o").arg(&fresh), CLI_TIMEOUT);
    let (o, e) = text(&out);
    assert!(!out.status.success(), "keygen wrote a new key next to a stopped volume: {o}");
    assert!(e.contains("may hold a volume"), "stderr:\n{e}");
    assert!(e.contains(&format!("restore {} from your backup", fresh.display())), "stderr:\n{e}");
    assert!(fresh.symlink_metadata().is_err(), "keygen created {}", fresh.display());

    // Anywhere else keygen works as before.
    let elsewhere = c.work_dir().join("id.txt");
    let out = output(c.fs_client().arg("keygen").arg("-o").arg(&elsewhere), CLI_TIMEOUT);
    assert!(out.status.success(), "keygen outside a state directory failed: {:?}", text(&out));
    assert_eq!(text(&out).0.trim(), recipient_of(&elsewhere));
}

/// A bare dirsvc (no peers, no volume) started from the built binary in its
/// own tempdir, with a certificate of the test CA (and an admin one in
/// [`BareDirsvc::admin_tls`]); SIGKILLed and reaped on drop.
struct BareDirsvc {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl BareDirsvc {
    fn admin_tls(&self) -> std::path::PathBuf {
        self.dir.path().join("admin-tls")
    }

    fn start() -> BareDirsvc {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr_file = dir.path().join("dirsvc.addr");
        testkit::pki().write_node(common::rpc::Role::Dirsvc, &dir.path().join("tls"));
        testkit::pki().write_node(common::rpc::Role::Admin, &dir.path().join("admin-tls"));
        let mut cmd = Command::new(bin_dir().join("dirsvc"));
        hermetic(&mut cmd);
        let child = cmd
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("dirsvc.redb"))
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dirsvc");
        let mut me = BareDirsvc { child, addr: String::new(), dir };
        let found = testkit::wait_until(
            || {
                me.addr = fs::read_to_string(&addr_file).unwrap_or_default().trim().to_string();
                !me.addr.is_empty()
            },
            Duration::from_secs(30),
        );
        assert!(found.is_some(), "dirsvc did not write {}", addr_file.display());
        me
    }
}

impl Drop for BareDirsvc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn volume_shows_the_recipients_with_no_identity_and_says_when_there_is_none() {
    let fs_client = bin_dir().join("fs-client");
    let mut d = BareDirsvc::start();
    {
        let mut cmd = Command::new(&fs_client);
        hermetic(&mut cmd);
        cmd.arg("--tls-dir").arg(d.admin_tls());
        let out = output(cmd.args(["volume", "--dirsvc", &d.addr]), CLI_TIMEOUT);
        let (o, e) = text(&out);
        assert!(out.status.success(), "fs-client volume with no volume should exit 0: {e}");
        assert_eq!(o.trim(), format!("no volume yet on dirsvc {}", d.addr));
        assert_eq!(
            volume_json(&fs_client, &d.admin_tls(), &d.addr),
            serde_json::json!({ "dirsvc": d.addr, "volume": null })
        );
    }

    let c = TestCluster::start(1, 1);
    let addr = c.dirsvc_addr().to_string();
    let ours = recipient_of(&c.identity_file());
    let v = volume_json(&fs_client, &c.admin_tls_dir(), &addr);
    let vol = &v["volume"];
    assert_eq!(vol["recipients"], serde_json::json!([ours]), "{v}");
    assert_eq!(vol["replicas"], 1, "{v}");
    assert!(vol["block_size"].as_u64().is_some_and(|b| b.is_power_of_two()), "{v}");
    let id = vol["id"].as_str().expect("id is a string").to_string();
    assert_eq!(id.len(), 32, "{v}");

    let out = output(c.fs_client().args(["volume", "--dirsvc", &addr]), CLI_TIMEOUT);
    let (o, _) = text(&out);
    assert!(out.status.success());
    assert!(o.lines().any(|l| l == format!("volume: {id}")), "{o}");
    assert!(o.lines().any(|l| l == format!("recipient: {ours}")), "{o}");
    assert!(o.lines().any(|l| l == "replicas: 1"), "{o}");

    // dirsvc unreachable: an error, not "no volume".
    drop(c);
    let _ = d.child.kill();
    let _ = d.child.wait();
    let mut cmd = Command::new(&fs_client);
    hermetic(&mut cmd);
    cmd.arg("--tls-dir").arg(d.admin_tls());
    let out = output(cmd.args(["volume", "--dirsvc", &d.addr]), CLI_TIMEOUT);
    assert!(!out.status.success(), "fs-client volume succeeded with dirsvc gone: {:?}", text(&out));
}
