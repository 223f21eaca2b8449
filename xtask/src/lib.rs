//! xtask library: dev host control shared with the end-to-end tests.
