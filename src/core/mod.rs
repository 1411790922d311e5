//! The pure-Rust scheduler core: no pyo3 in its types. Python payloads are the opaque `P`.

pub mod decide_worker;
pub mod entities;
pub mod heapset;
pub mod ordered;
pub mod pyset;
pub mod state;
pub mod stimuli;
pub mod transitions;
pub mod types;
pub mod validate;
#[cfg(test)]
mod tests;
