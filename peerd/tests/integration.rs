//! peerd's integration tests, one binary (see each module for what it pins).

mod integration {
    mod bad_frames;
    mod binary;
    mod corruption;
    mod heartbeat;
    mod restart;
    mod suite;
    mod util;
}
