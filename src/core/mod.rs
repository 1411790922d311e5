//! The pure-Rust scheduler core: no pyo3 in its types. Python payloads are the opaque `P`.

pub mod decide_worker;
pub mod entities;
pub mod heapset;
pub mod ordered;
pub mod pyset;
pub mod state;
pub mod stealing;
pub mod stimuli;
#[cfg(test)]
mod tests;
pub mod transitions;
pub mod types;
pub mod validate;
