//! The pure-Rust scheduler core: no pyo3 in its types. Python payloads are the opaque `P`.

/// distributed's `assert x` on a value the transition needs: an error (AssertionError in
/// Python), never a panic.
macro_rules! required {
    ($opt:expr, $what:expr) => {
        $opt.ok_or_else(|| {
            crate::core::types::CoreError::Validation(format!("assertion failed: {}", $what))
        })?
    };
}

pub mod clients;
pub mod decide_worker;
pub mod edits;
pub mod entities;
pub mod graph;
pub mod groups;
pub mod heapset;
pub mod keys;
pub mod messages;
pub mod occupancy;
pub mod order;
pub mod ordered;
pub mod propagate;
pub mod pyset;
pub mod replicas;
pub mod state;
pub mod stealing;
pub mod stealing_state;
pub mod tasks;
#[cfg(test)]
mod tests;
pub mod transitions;
pub mod types;
pub mod validate;
pub mod workers;
