//! NSS module.
