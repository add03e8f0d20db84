//! armourd: a fast Linux process watchdog. The daemon binary is a thin
//! shell around these modules; see `daemon` for the event loop and
//! `supervisor` for the decisions.

pub mod launch;
pub mod status;
