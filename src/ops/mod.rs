//! Operator commands that work on a whole cache: prefetching from lockfiles (and, later,
//! export/import, verification and garbage collection).

pub mod bundle;
pub mod prefetch;
pub mod verify;
