//! End-to-end tests live in tests/; they drive the dev host through xtask.
