//! The integration tests of dirsvc, in one binary: the store's namespace
//! and layout semantics, orphans and extended attributes, the service over
//! real TCP and mutual TLS (who may call what, sessions, locks, the change
//! feed), peer liveness and placement, repair and garbage collection
//! against in-process fake peers, key epochs, members and layout MACs as
//! dirsvc enforces them, the binary, and the kv layer's etcd engine and
//! leader election against real etcd processes.

mod integration {
    mod auth;
    mod binary;
    mod changes;
    mod epochs;
    mod failover;
    mod fakepeer;
    mod gc;
    mod hostile;
    mod kv_etcd;
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
    mod terms;
    mod xattrs;
}
