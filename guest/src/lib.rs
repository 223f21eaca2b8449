//! Guest agent protocol.
