//! Ring buffer records of the kernel half, turned into [`Event`]s.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

use armourd_common::{EventKind, ExecRecord, ExitRecord, ForkRecord, Header, EXEC_INTERPRETER};

use crate::{
    backend::{Event, ExecEvent},
    launch::split_nul,
    status::ExitStatus,
};

/// Reads a `T` from the start of `bytes`, if it is long enough.
fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: long enough, and every bit pattern is a valid T (Pod); the
        // read is unaligned.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Turns one ring buffer record into an event.
pub(crate) fn decode(bytes: &[u8], ns_per_tick: u64) -> Option<Event> {
    let header: Header = read(bytes)?;
    let start = Some(header.start_boottime_ns / ns_per_tick);
    Some(match EventKind::from_raw(header.kind)? {
        EventKind::Exit => {
            let record: ExitRecord = read(bytes)?;
            Event::Exit {
                pid: header.tgid,
                start,
                status: ExitStatus::from_wait_status(record.status),
                ktime_ns: Some(header.ktime_ns),
            }
        }
        EventKind::Fork => {
            let record: ForkRecord = read(bytes)?;
            Event::Fork {
                parent: record.parent_tgid,
                child: header.tgid,
                start,
            }
        }
        EventKind::Exec => Event::Exec(decode_exec(bytes, start)?),
    })
}

fn decode_exec(bytes: &[u8], start: Option<u64>) -> Option<ExecEvent> {
    let aligned = bytes.as_ptr().align_offset(align_of::<ExecRecord>()) == 0;
    if bytes.len() < size_of::<ExecRecord>() || !aligned {
        return None;
    }
    // SAFETY: checked length and alignment (ring buffer records are
    // 8-byte aligned); every bit pattern is a valid ExecRecord.
    let record = unsafe { &*bytes.as_ptr().cast::<ExecRecord>() };
    let area = |buf: &[u8], len: u32| buf.get(..len as usize).map(split_nul);
    // A truncated area is read from /proc instead.
    let whole = |flag: u32| record.flags & flag == 0;
    Some(ExecEvent {
        pid: record.header.tgid,
        start,
        file: Some(record.file),
        argv: area(&record.args, record.args_len)
            .filter(|_| whole(armourd_common::EXEC_ARGS_TRUNCATED)),
        env: area(&record.env, record.env_len)
            .filter(|_| whole(armourd_common::EXEC_ENV_TRUNCATED)),
        uid: Some(record.uid),
        gid: Some(record.gid),
        filename: (record.flags & EXEC_INTERPRETER != 0)
            .then(|| record.filename.get(..record.filename_len as usize))
            .flatten()
            .map(|name| OsStr::from_bytes(name).to_owned()),
        ktime_ns: Some(record.header.ktime_ns),
    })
}
