//! The decoders and parsers the fuzz targets in `fuzz/` drive, which a
//! normal build keeps private to the crate. Built only by cargo-fuzz
//! (which sets `--cfg fuzzing`), so normal builds keep their visibility.
//! `config::parse` is public already and called where it is.

use crate::backend::Event;

pub use crate::{
    backend::proc_connector::filter::{decode as decode_datagram, Message},
    files::parse_shebang,
    launch::{split_nul, StdioTarget},
    procfs::{
        clock_ticks_per_second, parse_stat, parse_status, parse_task_state, stdio_target, FdKind,
    },
    state::{parse as parse_state, render as render_state, StateError, VERSION as STATE_VERSION},
};

/// Turns one eBPF ring buffer record into an event, as the eBPF backend
/// does with each record it reads (`ns_per_tick`: nanoseconds per clock tick).
pub fn decode_record(bytes: &[u8], ns_per_tick: u64) -> Option<Event> {
    crate::backend::ebpf::decode(bytes, ns_per_tick)
}
