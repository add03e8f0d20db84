//! The eBPF backend's ring buffer record decoder over any bytes. The first
//! byte chooses how the rest is laid out in memory: bit 0 puts the record
//! one byte off the 8-byte alignment ring buffer records have, bit 1
//! zero-pads it to a whole `ExecRecord` (8 KiB and more), so that short
//! inputs reach the exec decoder too. What decodes must agree with the
//! record: its kind, its process, and lengths within its areas.

#![no_main]

use std::{ffi::OsString, mem::offset_of};

use armourd::{
    backend::Event,
    fuzz::{clock_ticks_per_second, decode_record},
};
use armourd_common::{
    EventKind, ExecRecord, ExitRecord, ForkRecord, Header, SpawnedRecord, ARGS_MAX, ENV_MAX,
    FILENAME_MAX,
};
use libfuzzer_sys::fuzz_target;

const MISALIGNED: u8 = 1;
const PADDED: u8 = 1 << 1;

fuzz_target!(|data: &[u8]| {
    let Some((&layout, record)) = data.split_first() else {
        return;
    };
    let offset = usize::from(layout & MISALIGNED);
    let len = if layout & PADDED != 0 {
        record.len().max(size_of::<ExecRecord>())
    } else {
        record.len()
    };
    // Allocated at its exact size, so that the sanitizer catches a read
    // past the record's end.
    let mut buf = Vec::with_capacity(offset + len);
    buf.resize(offset, 0);
    buf.extend_from_slice(record);
    buf.resize(offset + len, 0);
    assert!(
        len == 0 || buf.as_ptr().align_offset(8) == 0,
        "the allocator did not align the buffer as the ring buffer does"
    );
    let bytes = &buf[offset..];
    let ns_per_tick = 1_000_000_000 / clock_ticks_per_second();
    if let Some(event) = decode_record(bytes, ns_per_tick) {
        check(bytes, event);
    }
});

fn word(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// Bytes that `strings` took in a NUL-separated area.
fn area_len(strings: &[OsString]) -> usize {
    let bytes: usize = strings.iter().map(|s| s.len()).sum();
    bytes + strings.len().saturating_sub(1)
}

fn check(bytes: &[u8], event: Event) {
    assert!(bytes.len() >= size_of::<Header>(), "decoded a short record");
    let kind = word(bytes, offset_of!(Header, kind));
    let tgid = word(bytes, offset_of!(Header, tgid));
    let kind = EventKind::from_raw(kind).expect("decoded a record of an unknown kind");
    match (kind, event) {
        (EventKind::Exit, Event::Exit { pid, .. }) => {
            assert!(bytes.len() >= size_of::<ExitRecord>());
            assert_eq!(pid, tgid);
        }
        (EventKind::Fork, Event::Fork { parent, child, .. }) => {
            assert!(bytes.len() >= size_of::<ForkRecord>());
            assert_eq!(child, tgid);
            assert_eq!(parent, word(bytes, offset_of!(ForkRecord, parent_tgid)));
        }
        (EventKind::Spawned, Event::Exec(exec)) => {
            assert!(bytes.len() >= size_of::<SpawnedRecord>());
            assert_eq!(exec.pid, tgid);
            assert!(exec.argv.is_none() && exec.env.is_none());
        }
        (EventKind::Exec, Event::Exec(exec)) => {
            assert!(bytes.len() >= size_of::<ExecRecord>());
            assert_eq!(exec.pid, tgid);
            let field = |offset| word(bytes, offset) as usize;
            if let Some(argv) = &exec.argv {
                let len = field(offset_of!(ExecRecord, args_len));
                assert!(area_len(argv) <= len.min(ARGS_MAX), "argv past args_len");
            }
            if let Some(env) = &exec.env {
                let len = field(offset_of!(ExecRecord, env_len));
                assert!(area_len(env) <= len.min(ENV_MAX), "env past env_len");
            }
            if let Some(filename) = &exec.filename {
                let len = field(offset_of!(ExecRecord, filename_len));
                assert!(
                    filename.len() <= len.min(FILENAME_MAX),
                    "filename past filename_len"
                );
            }
        }
        (kind, event) => panic!("a {kind:?} record decoded as {event:?}"),
    }
}
