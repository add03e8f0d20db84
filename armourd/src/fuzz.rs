//! The decoders the fuzz targets in `fuzz/` drive that a normal build keeps
//! private to their modules. Built only by cargo-fuzz (which sets
//! `--cfg fuzzing`), so normal builds keep their visibility. The parsers
//! that are public already (`config::parse`, the `procfs` parsers,
//! `launch::split_nul`, `files::parse_shebang`) are called where they are.

use crate::backend::Event;

pub use crate::backend::proc_connector::filter::{decode as decode_datagram, Message};

/// Turns one eBPF ring buffer record into an event, as the eBPF backend
/// does with each record it reads (`ns_per_tick`: nanoseconds per clock tick).
pub fn decode_record(bytes: &[u8], ns_per_tick: u64) -> Option<Event> {
    crate::backend::ebpf::decode(bytes, ns_per_tick)
}
