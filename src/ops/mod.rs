//! Operator commands that work on a whole cache: prefetching from lockfiles, air-gap
//! bundles, verification and garbage collection.

pub mod bundle;
pub mod gc;
pub mod prefetch;
pub mod verify;
