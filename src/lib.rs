//! dask-rsched: the Dask distributed scheduler's state and transitions in Rust.
//!
//! `core` is plain Rust (arenas addressed by ids); `bindings` is the thin PyO3 layer;
//! `cell` is the borrow flag the bindings keep the core's state behind.

#[cfg(feature = "python")]
mod cell;
pub mod core;

#[cfg(feature = "python")]
mod bindings;
