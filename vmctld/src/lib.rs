//! vmctld library.
