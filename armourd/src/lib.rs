//! armourd: a fast Linux process watchdog. The daemon binary is a thin
//! shell around these modules; see `daemon` for the event loop and
//! `supervisor` for the decisions.

pub mod backend;
pub mod btf;
pub mod cli;
pub mod config;
pub mod ctl_cli;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub mod files;
#[cfg(fuzzing)]
pub mod fuzz;
pub mod launch;
pub mod logging;
pub mod pidfd;
pub mod place;
pub mod procfs;
pub mod service;
pub mod spawn;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod watchdog;
pub mod watchlist;
