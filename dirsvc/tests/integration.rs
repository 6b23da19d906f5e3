//! The integration tests of dirsvc, in one binary: the store's namespace
//! and layout semantics, the service over real TCP, and the binary.

mod integration {
    mod binary;
    mod layout;
    mod namespace;
    mod readdir;
    mod rpc;
    mod support;
}
