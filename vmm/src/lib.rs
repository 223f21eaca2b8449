//! VMM drivers.
