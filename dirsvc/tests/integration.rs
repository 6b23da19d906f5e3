//! The integration tests of dirsvc, in one binary: the store's namespace
//! and layout semantics, the service over real TCP, peer liveness and
//! placement, repair and garbage collection against in-process fake peers,
//! and the binary.

mod integration {
    mod binary;
    mod fakepeer;
    mod gc;
    mod layout;
    mod liveness;
    mod namespace;
    mod readdir;
    mod repair;
    mod rpc;
    mod support;
}
