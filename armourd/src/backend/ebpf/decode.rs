//! Ring buffer records of the kernel half, turned into [`Event`]s.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

use armourd_common::{
    EventKind, ExecRecord, ExitRecord, ForkRecord, Header, SpawnedRecord, EXEC_INTERPRETER,
};

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
        EventKind::Spawned => {
            // What armourd started: the spawner has its command line.
            let record: SpawnedRecord = read(bytes)?;
            Event::Exec(ExecEvent {
                pid: header.tgid,
                start,
                file: Some(record.file),
                uid: Some(record.uid),
                gid: Some(record.gid),
                ktime_ns: Some(header.ktime_ns),
                ..ExecEvent::default()
            })
        }
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

#[cfg(test)]
mod tests {
    use armourd_common::{FileKey, ARGS_MAX, ENV_MAX, EXEC_ARGS_TRUNCATED, FILENAME_MAX};

    use super::*;

    /// The bytes of `record` as the ring buffer holds them (8-byte aligned).
    fn bytes_of<T: Copy>(record: &T) -> &[u8] {
        // SAFETY: `record` is borrowed for the slice's lifetime, and the
        // records are plain integers with explicit padding: every byte is set.
        unsafe { std::slice::from_raw_parts((record as *const T).cast(), size_of::<T>()) }
    }

    fn header(kind: EventKind, tgid: u32) -> Header {
        Header {
            kind: kind as u32,
            tgid,
            start_boottime_ns: 3_000,
            ktime_ns: 42,
        }
    }

    #[test]
    fn a_fork_record_is_a_fork_of_the_child_with_its_start() {
        let record = ForkRecord {
            header: header(EventKind::Fork, 11),
            parent_tgid: 10,
            _pad: 0,
        };
        assert_eq!(
            decode(bytes_of(&record), 1_000),
            Some(Event::Fork {
                parent: 10,
                child: 11,
                start: Some(3),
            })
        );
        assert_eq!(decode(&bytes_of(&record)[..30], 1_000), None, "cut short");
    }

    #[test]
    fn an_exec_record_gives_its_areas_unless_truncated() {
        let mut record = Box::new(ExecRecord {
            header: header(EventKind::Exec, 7),
            file: FileKey::new(5, 8, 1),
            uid: 1000,
            gid: 100,
            flags: EXEC_INTERPRETER | EXEC_ARGS_TRUNCATED,
            args_len: 5,
            env_len: 4,
            filename_len: 4,
            filename: [0; FILENAME_MAX],
            args: [0; ARGS_MAX],
            env: [0; ENV_MAX],
        });
        record.filename[..4].copy_from_slice(b"/a/s");
        record.args[..5].copy_from_slice(b"sh\0x\0");
        record.env[..4].copy_from_slice(b"A=1\0");
        let Some(Event::Exec(exec)) = decode(bytes_of(&*record), 1_000) else {
            panic!("not an exec");
        };
        let expected = ExecEvent {
            pid: 7,
            start: Some(3),
            file: Some(FileKey::new(5, 8, 1)),
            // Truncated: read from /proc instead.
            argv: None,
            env: Some(vec!["A=1".into()]),
            uid: Some(1000),
            gid: Some(100),
            filename: Some("/a/s".into()),
            ktime_ns: Some(42),
        };
        assert_eq!(exec, expected);
        record.flags = 0;
        let Some(Event::Exec(exec)) = decode(bytes_of(&*record), 1_000) else {
            panic!("not an exec");
        };
        assert_eq!(exec.argv, Some(vec!["sh".into(), "x".into()]));
        assert_eq!(exec.filename, None, "only an interpreter's is reported");
    }

    #[test]
    fn a_restarts_short_record_is_its_exec_without_a_command_line() {
        let record = SpawnedRecord {
            header: header(EventKind::Spawned, 77),
            file: FileKey::new(3, 8, 1),
            uid: 0,
            gid: 0,
        };
        let Some(Event::Exec(exec)) = decode(bytes_of(&record), 1_000) else {
            panic!("not an exec");
        };
        assert_eq!(
            (exec.pid, exec.start, exec.ktime_ns),
            (77, Some(3), Some(42))
        );
        assert_eq!(exec.file, Some(FileKey::new(3, 8, 1)));
        assert!(exec.argv.is_none() && exec.env.is_none());
    }
}
