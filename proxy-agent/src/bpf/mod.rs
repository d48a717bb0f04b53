//! The eBPF fast path: the embedded object, loading and attaching the programs, and their maps.

pub mod object;

pub use object::{BpfError, embedded_object};
