//! Types shared by armourd's kernel half (`armourd-ebpf`) and its daemon.
//!
//! Every record the eBPF programs write into the ring buffer starts with a
//! [`Header`] at offset 0 whose `kind` is one of the [`EventKind`] numbers.
//! All types are `#[repr(C)]`, `Copy` and made of fixed-width integers only,
//! with explicit padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Bytes of the argument area copied at exec time (argv, NUL-separated).
pub const ARGS_MAX: usize = 4096;
/// Bytes of the environment area copied at exec time (NUL-separated).
pub const ENV_MAX: usize = 4096;
/// Bytes of the file name given to `execve` (used for scripts).
pub const FILENAME_MAX: usize = 256;
/// Entries of each of the two maps of watched thread-group ids (one per
/// [`PidClass`]).
pub const MAX_WATCHED_PIDS: u32 = 16384;
/// Entries of the map of watched executables.
pub const MAX_WATCHED_FILES: u32 = 4096;
/// Size of the ring buffer, in bytes (a power of two, a multiple of the page size).
pub const RING_BUF_BYTES: u32 = 1 << 18;

/// Which of the two maps of watched processes holds a process. Processes
/// whose real uid is 0 have a map of their own, so that no unprivileged
/// user, whatever they watch or fork, can use up the room root's processes
/// need. The real uid is the one a user cannot change at will (a setuid
/// program still runs with the caller's).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PidClass {
    /// Real uid 0.
    Root = 0,
    /// Every other real uid.
    User = 1,
}

impl PidClass {
    /// The class of a process with real uid `uid`.
    pub const fn of_uid(uid: u32) -> Self {
        if uid == 0 {
            Self::Root
        } else {
            Self::User
        }
    }

    /// For the log: whose map it is.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::User => "unprivileged",
        }
    }
}

/// A failure of the kernel half that user space must hear of, the index of
/// its per-CPU counter in the `FAILURES` map. Whatever failed concerns
/// watched processes or files; nothing else is counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A record did not fit into the ring buffer: lost, reconcile with /proc.
    RingFull = 0,
    /// A read of kernel memory failed: a record is lost, reconcile with /proc.
    ReadFailed = 1,
    /// The map of root's processes was full: a process is not watched.
    RootMapFull = 2,
    /// The map of unprivileged processes was full: a process is not watched.
    UserMapFull = 3,
}

/// Entries of the `FAILURES` map: one per [`Failure`].
pub const FAILURE_KINDS: u32 = 4;

impl Failure {
    /// Every kind, in index order.
    pub const ALL: [Self; FAILURE_KINDS as usize] = [
        Self::RingFull,
        Self::ReadFailed,
        Self::RootMapFull,
        Self::UserMapFull,
    ];

    /// The map-full failure of `class`.
    pub const fn map_full(class: PidClass) -> Self {
        match class {
            PidClass::Root => Self::RootMapFull,
            PidClass::User => Self::UserMapFull,
        }
    }

    /// Whether records were lost (else a process was left unwatched, and
    /// the records about it were written).
    pub const fn loses_records(self) -> bool {
        matches!(self, Self::RingFull | Self::ReadFailed)
    }
}

/// The kind of a record, the first field of every [`Header`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A watched executable was executed, or a watched process executed something else.
    Exec = 1,
    /// A watched process forked a new process (not a thread).
    Fork = 2,
    /// The last thread of a watched process ended.
    Exit = 3,
    /// armourd's own child executed a watched file: a restart reaching its
    /// program. armourd knows what it started, so the record is short
    /// ([`SpawnedRecord`]): a burst of restarts fits the ring buffer.
    Spawned = 4,
}

impl EventKind {
    /// The kind with number `raw`, if there is one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            4 => Some(Self::Spawned),
            _ => None,
        }
    }
}

/// The start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// The thread-group id (the process id) the record is about.
    pub tgid: u32,
    /// `task_struct.start_boottime` of that process, in nanoseconds since boot.
    pub start_boottime_ns: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was written.
    pub ktime_ns: u64,
}

/// The last thread of a watched process ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: Header,
    /// The wait status the parent's `wait()` sees (`exit_code << 8`, or the
    /// signal number with `0x80` for a core dump).
    pub status: u32,
    pub _pad: u32,
}

/// A watched process forked a new process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRecord {
    /// `header.tgid` is the child.
    pub header: Header,
    /// The forking process.
    pub parent_tgid: u32,
    pub _pad: u32,
}

/// A child of armourd executed a watched file (see [`EventKind::Spawned`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpawnedRecord {
    pub header: Header,
    /// The executed file's key in the map of watched files.
    pub file: FileKey,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
}

/// `ExecRecord::flags`: the argument area did not fit into [`ARGS_MAX`] bytes.
pub const EXEC_ARGS_TRUNCATED: u32 = 1;
/// `ExecRecord::flags`: the environment did not fit into [`ENV_MAX`] bytes.
pub const EXEC_ENV_TRUNCATED: u32 = 1 << 1;
/// `ExecRecord::flags`: the executed file is the interpreter of a watched
/// script; the script is known from `filename` only.
pub const EXEC_INTERPRETER: u32 = 1 << 2;
/// `ExecRecord::flags`: the executed file is watched.
pub const EXEC_WATCHED_FILE: u32 = 1 << 3;
/// `ExecRecord::flags`: the process was watched before this exec (it stays
/// watched until user space unwatches it, whatever it executed).
pub const EXEC_WAS_WATCHED: u32 = 1 << 4;

/// A process executed a program (see the `EXEC_*` flags for why it was reported).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: Header,
    /// The executed file's key in the map of watched files.
    pub file: FileKey,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    pub flags: u32,
    /// Valid bytes in `args`.
    pub args_len: u32,
    /// Valid bytes in `env`.
    pub env_len: u32,
    /// Valid bytes in `filename` (without the NUL).
    pub filename_len: u32,
    pub filename: [u8; FILENAME_MAX],
    pub args: [u8; ARGS_MAX],
    pub env: [u8; ENV_MAX],
}

/// A file as the kernel names it: the device of its super block (kernel
/// `dev_t` encoding, `major << 20 | minor`) and its inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

impl FileKey {
    /// The key of a file with `st_ino` and user-space `st_dev`.
    pub fn new(ino: u64, major: u32, minor: u32) -> Self {
        Self {
            ino,
            dev: (major << 20) | (minor & 0xf_ffff),
            _pad: 0,
        }
    }
}

/// Value of the map of watched files.
pub const FILE_WATCHED: u32 = 1;
/// Value of the map of watched files: an interpreter of a watched script.
pub const FILE_INTERPRETER: u32 = 2;

/// Byte offsets of the kernel structure members the programs read, taken
/// from the running kernel's BTF at start-up and handed in as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub task_real_cred: u32,
    pub task_real_parent: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub signal_live: u32,
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    pub binprm_file: u32,
    pub binprm_filename: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// `SIGNAL_GROUP_EXIT` in `signal_struct.flags`: the whole group is exiting
/// and `group_exit_code` holds its status
/// (<https://github.com/torvalds/linux/blob/master/include/linux/sched/signal.h>).
pub const SIGNAL_GROUP_EXIT: u32 = 0x4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, integers with explicit padding: every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: repr(C), Copy, an array of integers: every bit pattern is a
    // valid value.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: repr(C), Copy, integers only (24 bytes, asserted below, no
    // padding): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Header {}
    // SAFETY: repr(C), Copy, a Header and integers with explicit padding:
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ExitRecord {}
    // SAFETY: as for ExitRecord.
    unsafe impl aya::Pod for super::ForkRecord {}
    // SAFETY: repr(C), Copy, a Header, a FileKey and two u32 (48 bytes,
    // asserted below, no padding): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SpawnedRecord {}
}

const _: () = {
    assert!(core::mem::size_of::<Header>() == 24);
    assert!(core::mem::size_of::<ExitRecord>() == 32);
    assert!(core::mem::size_of::<ForkRecord>() == 32);
    assert!(core::mem::size_of::<FileKey>() == 16);
    assert!(core::mem::size_of::<ExecRecord>() == 24 + 16 + 24 + FILENAME_MAX + ARGS_MAX + ENV_MAX);
    assert!(core::mem::size_of::<Offsets>() == 23 * 4);
    assert!(core::mem::size_of::<SpawnedRecord>() == 24 + 16 + 8);
    assert!(core::mem::offset_of!(ExitRecord, status) == 24);
    assert!(core::mem::offset_of!(ExecRecord, filename) == 64);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_record_round_trips_through_bytes() {
        let record = ExitRecord {
            header: Header {
                kind: EventKind::Exit as u32,
                tgid: 4242,
                start_boottime_ns: 123_456_789,
                ktime_ns: 987,
            },
            status: 0x300,
            _pad: 0,
        };
        // SAFETY: ExitRecord is repr(C), 32 bytes (asserted above), integers only: its bytes are plain data.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(record) };
        assert_eq!(&bytes[0..4], &3u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &4242u32.to_ne_bytes());
        assert_eq!(&bytes[24..28], &0x300u32.to_ne_bytes());
        // SAFETY: 32 bytes hold an ExitRecord, all of whose bit patterns are valid; the read is unaligned.
        let back: ExitRecord = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(back, record);
    }

    /// The bytes of `value`, as the kernel half writes them.
    fn bytes_of<T: Copy>(value: &T) -> &[u8] {
        // SAFETY: `value` is borrowed for the slice's lifetime; the records
        // are repr(C) integers with explicit padding, so every byte is
        // initialised.
        unsafe {
            core::slice::from_raw_parts((value as *const T).cast::<u8>(), core::mem::size_of::<T>())
        }
    }

    /// A `T` read back from `bytes`, as the daemon reads a record.
    fn read_back<T: Copy>(bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), core::mem::size_of::<T>());
        // SAFETY: as many bytes as a T, which is plain integers: every bit
        // pattern is valid; the read is unaligned.
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }
    }

    #[test]
    fn fork_record_round_trips_through_bytes() {
        let record = ForkRecord {
            header: Header {
                kind: EventKind::Fork as u32,
                tgid: 4243,
                start_boottime_ns: 5,
                ktime_ns: 6,
            },
            parent_tgid: 4242,
            _pad: 0,
        };
        let bytes = bytes_of(&record);
        assert_eq!(&bytes[0..4], &(EventKind::Fork as u32).to_ne_bytes());
        assert_eq!(&bytes[4..8], &4243u32.to_ne_bytes());
        assert_eq!(&bytes[24..28], &4242u32.to_ne_bytes());
        assert_eq!(read_back::<ForkRecord>(bytes), record);
    }

    #[test]
    fn exec_record_round_trips_through_bytes() {
        let mut record = ExecRecord {
            header: Header {
                kind: EventKind::Exec as u32,
                tgid: 77,
                start_boottime_ns: 8,
                ktime_ns: 9,
            },
            file: FileKey::new(12, 8, 1),
            uid: 1000,
            gid: 100,
            flags: EXEC_INTERPRETER | EXEC_ENV_TRUNCATED,
            args_len: 8,
            env_len: 4,
            filename_len: 5,
            filename: [0; FILENAME_MAX],
            args: [0; ARGS_MAX],
            env: [0; ENV_MAX],
        };
        record.filename[..5].copy_from_slice(b"/a/sh");
        record.args[..8].copy_from_slice(b"sh\0-c\0x\0");
        record.env[..4].copy_from_slice(b"A=1\0");
        let bytes = bytes_of(&record);
        assert_eq!(&bytes[4..8], &77u32.to_ne_bytes());
        assert_eq!(&bytes[24..32], &12u64.to_ne_bytes());
        assert_eq!(&bytes[40..44], &1000u32.to_ne_bytes());
        assert_eq!(&bytes[64..69], b"/a/sh");
        let args = 64 + FILENAME_MAX;
        assert_eq!(&bytes[args..args + 8], b"sh\0-c\0x\0");
        assert_eq!(&bytes[args + ARGS_MAX..args + ARGS_MAX + 4], b"A=1\0");
        assert_eq!(read_back::<ExecRecord>(bytes), record);
    }

    #[test]
    fn file_key_uses_kernel_dev_t_encoding() {
        let key = FileKey::new(7, 8, 1);
        assert_eq!(key.dev, (8 << 20) | 1);
        assert_eq!(key.ino, 7);
    }

    #[test]
    fn only_real_uid_0_is_in_roots_class() {
        assert_eq!(PidClass::of_uid(0), PidClass::Root);
        assert_eq!(PidClass::of_uid(1), PidClass::User);
        assert_eq!(PidClass::of_uid(65534), PidClass::User);
        assert_eq!(PidClass::of_uid(u32::MAX), PidClass::User);
    }

    #[test]
    fn failures_are_indexed_in_order_and_full_maps_lose_no_records() {
        for (index, failure) in Failure::ALL.iter().enumerate() {
            assert_eq!(*failure as usize, index);
        }
        assert_eq!(Failure::map_full(PidClass::Root), Failure::RootMapFull);
        assert_eq!(Failure::map_full(PidClass::User), Failure::UserMapFull);
        assert!(Failure::RingFull.loses_records() && Failure::ReadFailed.loses_records());
        assert!(!Failure::RootMapFull.loses_records() && !Failure::UserMapFull.loses_records());
    }

    #[test]
    fn unknown_event_kinds_are_rejected() {
        assert_eq!(EventKind::from_raw(2), Some(EventKind::Fork));
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(99), None);
    }
}
