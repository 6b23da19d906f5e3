//! Fuzz targets for every decoder of p2pfs that reads bytes from the
//! network or from a disk.
//!
//! A target is a `fn(&[u8])` that feeds the bytes to one decoder the way
//! the daemons and the client do, and a `fn() -> Vec<Vec<u8>>` of valid
//! inputs to start mutating from (plain random bytes rarely get past a
//! magic, a length prefix or an authentication tag). A target must never
//! panic and never allocate without bound, whatever the bytes: that is
//! invariant 5 of DESIGN.md. Where the format has a writer or the caller
//! relies on more than a verdict, the target also asserts it (a round trip,
//! an identity kept, nothing forged accepted): a failed assertion is a
//! panic, reported like any other. The registry [`TARGETS`] lists them all;
//! adding one is one line there. Two runners use it:
//!
//! - `tests/fuzz.rs` (part of `cargo test --workspace --release`): every
//!   target gets [`Target::ci_cases`] inputs (100,000; 0 for a target
//!   with a known failure in a dependency),
//!   seeded random bytes and mutated seeds ([`generate`]), under an
//!   allocator that fails the test on any allocation over 64 MiB or a
//!   case that holds more than 256 MiB at once.
//! - `fuzz/` (cargo-fuzz, libFuzzer, coverage-guided), run by
//!   `scripts/fuzz.sh` for long passes: one fuzz binary that runs the
//!   target named by `P2PFS_FUZZ_TARGET`, with a corpus per target seeded
//!   from [`Target::seeds`] (`cargo run --example fuzz-seeds`).
//!
//! Keys, identities and volumes the targets need are fixed (derived from
//! constants, or test certificates and keys in `testkit/fuzz-fixtures/`),
//! so a failing input reproduces.

pub mod frames;
pub mod local;
pub mod mutate;
pub mod pki;
pub mod sealed;
pub mod trust;

pub use mutate::generate;

/// Cases the CI pass gives a target unless its entry says otherwise.
pub const CI_CASES: u32 = 100_000;

/// Longest input a target is given, in bytes (libFuzzer's `-max_len` in
/// `scripts/fuzz.sh` too): above the largest valid seed, so mutations can
/// grow them.
pub const MAX_INPUT: usize = 1 << 20;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name: the value of `P2PFS_FUZZ_TARGET` and the corpus directory.
    pub name: &'static str,
    /// Feeds one input to the decoder. Never panics.
    pub run: fn(&[u8]),
    /// Valid inputs to mutate.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Inputs the CI pass gives it (0: only `scripts/fuzz.sh` runs it, for a
    /// known failure outside this project's code, named at its entry).
    pub ci_cases: u32,
}

/// A [`Target`] entry: name, run function, seed function, and optionally
/// the CI case count.
macro_rules! target {
    ($name:literal, $run:path, $seeds:path) => {
        target!($name, $run, $seeds, CI_CASES)
    };
    ($name:literal, $run:path, $seeds:path, $cases:expr) => {
        Target { name: $name, run: $run, seeds: $seeds, ci_cases: $cases }
    };
}

/// Every fuzz target, one line each.
pub const TARGETS: &[Target] = &[
    target!("frame-dir-request", frames::dir_request, frames::dir_request_seeds),
    target!("frame-dir-response", frames::dir_response, frames::dir_response_seeds),
    target!("frame-peer-request", frames::peer_request, frames::peer_request_seeds),
    target!("frame-peer-response", frames::peer_response, frames::peer_response_seeds),
    target!("chunk-open", sealed::chunk_open, sealed::chunk_seeds),
    target!("chunk-open-ad", sealed::chunk_open_ad, sealed::chunk_ad_seeds),
    target!("wrapped-secret", sealed::wrapped_secret, sealed::wrapped_secret_seeds),
    target!("sealed-name", sealed::sealed_name, sealed::sealed_name_seeds),
    target!("sealed-xattr-name", sealed::sealed_xattr_name, sealed::sealed_xattr_name_seeds),
    target!("dirsvc-record-inode", local::record_inode, local::record_inode_seeds),
    target!("dirsvc-record-chunk", local::record_chunk, local::record_chunk_seeds),
    target!("dirsvc-record-peer", local::record_peer, local::record_peer_seeds),
    target!("dirsvc-record-tombstone", local::record_tombstone, local::record_tombstone_seeds),
    target!("dirsvc-record-session", local::record_session, local::record_session_seeds),
    target!("dirsvc-record-volume", local::record_volume, local::record_volume_seeds),
    // Not in the CI pass: redb 4.6 panics (`unreachable!` in
    // `TypeClassification::from_byte`) opening some damaged files that are
    // marked clean; see `testkit/fuzz-regressions/` and the
    // ignored test in testkit/tests/fuzz_regressions.rs. scripts/fuzz.sh
    // still runs it.
    target!("dirsvc-database", local::database, local::database_seeds, 0),
    target!("recovery-file", local::recovery_file, local::recovery_file_seeds),
    target!("recovery-records", local::recovery_records, local::recovery_records_seeds),
    target!("scrub-state", local::scrub_state, local::scrub_state_seeds),
    target!("peer-id-file", local::peer_id_file, local::peer_id_file_seeds),
    target!("recovery-file-v1", local::recovery_file, local::recovery_file_v1_seeds),
    target!("recovery-records-v1", local::recovery_records_v1, local::recovery_records_v1_seeds),
    target!("revoked-file", local::revoked_file, local::revoked_file_seeds),
    target!("pin-file", local::pin_file, local::pin_file_seeds),
    target!("identity-file", local::identity_file, local::identity_file_seeds),
    target!("pki-node-cert", pki::node_cert, pki::node_cert_seeds),
    target!("pki-ca-cert", pki::ca_cert, pki::ca_cert_seeds),
    target!("pki-csr", pki::csr, pki::csr_seeds),
    target!("join-token", pki::join_token, pki::join_token_seeds),
    target!("node-files", pki::node_files, pki::node_files_seeds),
    target!("keyring", trust::keyring, trust::keyring_seeds),
    target!("layout-mac", trust::layout_mac, trust::layout_mac_seeds),
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_target_has_seeds_that_run() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|o| o.name != t.name), "{} twice", t.name);
            let seeds = (t.seeds)();
            assert!(!seeds.is_empty(), "{} has no seeds", t.name);
            for s in &seeds {
                assert!(s.len() <= MAX_INPUT, "{}: seed of {} bytes", t.name, s.len());
                (t.run)(s);
            }
        }
    }
}
