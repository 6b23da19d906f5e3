//! Running a program with a deadline, for tests: a test that waits on a
//! hung tool fails with the command line instead of hanging the suite.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion within `timeout` and returns its output,
/// whatever the exit status. Panics on timeout (after SIGKILL; it does not
/// wait for a child stuck in the kernel, the cluster's drop unblocks it).
pub fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{desc} did not finish within {timeout:?}");
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// Runs `cmd` within `timeout`, expecting exit 0; returns its stdout.
pub fn run(cmd: &mut Command, timeout: Duration) -> String {
    let out = output(cmd, timeout);
    let clip = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s[start..].to_string()
    };
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout (tail):\n{}\nstderr (tail):\n{}",
        out.status,
        clip(&out.stdout),
        clip(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
