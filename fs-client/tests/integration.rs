//! End-to-end tests: the real `dirsvc`, `peerd` and `fs-client` binaries, a
//! real FUSE mount and ordinary tools (`cp -a`, `diff -r`, `sha256sum`).
//!
//! One test binary (see `integration/`). The tests need root and
//! `/dev/fuse`; without them they fail with a message saying so. They take a
//! global lock so that only one cluster moves data at a time.

mod integration {
    mod cli_contract;
    mod cluster;
    mod confidentiality;
    mod copy_tree;
    mod peer_faults;
    mod tools;
}
