//! Inputs the fuzz targets once failed on, replayed through their target.
//! Each file in `testkit/fuzz-regressions/` is named `<target>-<what>.bin`; a test
//! here says what it pinned.

use std::path::Path;

fn replay(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions").join(file);
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The target whose name is the longest prefix of the file's.
    let target = testkit::fuzz::TARGETS
        .iter()
        .filter(|t| file.strip_prefix(t.name).is_some_and(|rest| rest.starts_with('-')))
        .max_by_key(|t| t.name.len())
        .unwrap_or_else(|| panic!("no target for {file}"));
    (target.run)(&input);
}

/// `NodeFiles::from_pem` checked the first PEM block of `node.key`
/// whatever its label (rcgen's `KeyPair::from_pem`) while TLS signs with
/// the first `PRIVATE KEY` block: this key file (a peer's key relabelled,
/// then an admin's key) passed with the peer's certificate, and the node
/// would have signed with the admin's key (found by review, written as
/// this input for the `node-files` target, whose property fails on it
/// before the fix in common::pki).
#[test]
fn node_files_check_the_key_tls_uses() {
    replay("node-files-decoy-key.bin");
}

/// Known failure in redb 4.6.0, not fixed here: opening this damaged
/// database file (marked clean, so redb does not repair it) reaches
/// `unreachable!()` in `redb::types::TypeClassification::from_byte` via
/// `Database::create` → `get_allocator_state_table`, so dirsvc aborts at
/// start instead of refusing the file with an error (found by the CI pass).
/// Run with `--ignored` after a redb upgrade; when both tests here pass,
/// drop the ignores and give the `dirsvc-database` target its CI cases
/// back.
#[test]
#[ignore = "redb 4.6.0 panics on this file (upstream bug)"]
fn a_damaged_database_marked_clean_is_refused_without_a_panic() {
    replay("dirsvc-database-redb-unreachable.bin");
}

/// The same family: a damaged page type byte reaches `unreachable!()` in
/// `Btree::get_helper` (redb 4.6.0 `tree_store/btree.rs`), on the same
/// path at open (found by `scripts/fuzz.sh dirsvc-database` in 30 s).
#[test]
#[ignore = "redb 4.6.0 panics on this file (upstream bug)"]
fn a_damaged_btree_page_type_is_refused_without_a_panic() {
    replay("dirsvc-database-redb-unreachable-btree.bin");
}
