//! The integration tests of dirsvc, in one binary: the store's namespace
//! and layout semantics, orphans and extended attributes, the service over
//! real TCP (sessions, locks, the change feed), peer liveness and
//! placement, repair and garbage collection against in-process fake peers,
//! and the binary.

mod integration {
    mod binary;
    mod changes;
    mod fakepeer;
    mod gc;
    mod hostile;
    mod layout;
    mod liveness;
    mod locks;
    mod namespace;
    mod orphans;
    mod readdir;
    mod repair;
    mod rpc;
    mod sessions;
    mod support;
    mod svc;
    mod xattrs;
}
