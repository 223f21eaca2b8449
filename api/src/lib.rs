//! Shared vocabulary of vmctl: the varlink interface, names, paths.
