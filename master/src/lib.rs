//! Skiff's master: the state store, and (in later steps) the API server, the scheduler and the
//! controllers, all in one process. See ARCHITECTURE.md for the map.

pub mod api;
pub mod config;
pub mod controllers;
pub mod scheduler;
pub mod store;
pub mod testing;
