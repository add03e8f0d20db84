//! The proc connector's wire format, pure: decoding its datagrams, and
//! generating the classic BPF socket filter the proc-connector backend
//! attaches to its netlink socket.
//!
//! The filter passes execs of thread-group leaders (all of them, or with
//! [`Execs::Held`] only those of the watched set, which then also holds the
//! processes fanotify saw opening a watched executable); forks by watched
//! processes, by young ones (see [`Ages`]: so that user space sees a
//! just-forked child's own forks before the filter holds it, as in a double
//! fork), and forks whose new pid is well past the young ones (pids moved
//! on: user space makes the filter anew); and new threads and ended threads
//! whose process, or whose process's parent, is watched. Everything else
//! (forks by older processes; UID, GID, SID, COMM, PTRACE, COREDUMP,
//! NONZERO_EXIT, foreign datagrams) is dropped in the kernel. The watched set
//! is searched as a balanced tree of comparisons, twice at most (the process,
//! then its parent, kept in scratch memory), so a datagram costs O(log n)
//! instructions. The tree's keys are runs of consecutive watched pids, each
//! one key: the restarts of a burst get consecutive pids, and the program,
//! made anew as they come and go, stays short (the kernel checks and compiles
//! every instruction at each attach). A program holds at most
//! [`BPF_MAXINSNS`] instructions, about 1,100 watched pids that are not
//! consecutive; beyond that every fork and exit passes.
//!
//! Kernel facts: [`cn_proc.h`], [`connector.h`], [`filter.h`] and, for the
//! interpreter, [`net/core/filter.c`] (word and half-word loads are
//! big-endian, the datagram is in host order).
//!
//! [`cn_proc.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/cn_proc.h
//! [`connector.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/connector.h
//! [`filter.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/filter.h
//! [`net/core/filter.c`]: https://github.com/torvalds/linux/blob/master/net/core/filter.c

use libc::sock_filter;

/// `CN_IDX_PROC` and `CN_VAL_PROC`: the proc connector's `cb_id`.
pub const CN_IDX_PROC: u32 = 1;
pub const CN_VAL_PROC: u32 = 1;

/// `enum what` of `struct proc_event`.
pub const PROC_EVENT_NONE: u32 = 0;
pub const PROC_EVENT_FORK: u32 = 0x0000_0001;
pub const PROC_EVENT_EXEC: u32 = 0x0000_0002;
pub const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Byte offsets in a datagram: `struct nlmsghdr` (16 bytes), `struct cn_msg`
/// (20 bytes), then `struct proc_event`, whose union starts 16 bytes in.
pub mod offset {
    pub const NLMSG_TYPE: usize = 4;
    pub const CN_IDX: usize = 16;
    pub const CN_VAL: usize = 20;
    pub const CN_ACK: usize = 28;
    pub const WHAT: usize = 36;
    pub const TIMESTAMP_NS: usize = 44;
    const DATA: usize = 52;
    /// `ack.err`.
    pub const ACK_ERR: usize = DATA;
    /// `exec.process_pid`, `exec.process_tgid`.
    pub const EXEC_PID: usize = DATA;
    pub const EXEC_TGID: usize = DATA + 4;
    /// `fork.parent_tgid`, `fork.child_pid`, `fork.child_tgid`.
    pub const FORK_PARENT_TGID: usize = DATA + 4;
    pub const FORK_CHILD_PID: usize = DATA + 8;
    pub const FORK_CHILD_TGID: usize = DATA + 12;
    /// `exit.process_pid`, `exit.process_tgid`, `exit.exit_code`, `exit.parent_tgid`.
    pub const EXIT_PID: usize = DATA;
    pub const EXIT_TGID: usize = DATA + 4;
    pub const EXIT_CODE: usize = DATA + 8;
    pub const EXIT_PARENT_TGID: usize = DATA + 20;
}

/// What the connector reports, decoded from a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// The answer to a subscription: `ack` is the request's plus one.
    Ack {
        ack: u32,
        err: u32,
    },
    Exec {
        pid: u32,
        tgid: u32,
        ktime_ns: u64,
    },
    /// `parent` is the new task's real parent: for a thread, its process's parent.
    Fork {
        parent: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    /// Thread `tid` of process `tgid` ended; `code` is its `exit_code`, in
    /// wait status form.
    Exit {
        tid: u32,
        tgid: u32,
        code: u32,
        ktime_ns: u64,
    },
}

/// Appends the connector messages of one datagram to `out`.
pub fn decode(datagram: &[u8], out: &mut Vec<Message>) {
    let mut rest = datagram;
    while let Some(len) = word(rest, 0).map(|len| len as usize) {
        let Some(message) = rest.get(..len).filter(|_| len >= 16) else {
            break;
        };
        out.extend(decode_one(message));
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
}

fn decode_one(m: &[u8]) -> Option<Message> {
    use offset::*;
    let kind = u16::from_ne_bytes(m.get(NLMSG_TYPE..NLMSG_TYPE + 2)?.try_into().ok()?);
    let ours = word(m, CN_IDX)? == CN_IDX_PROC && word(m, CN_VAL)? == CN_VAL_PROC;
    if kind != libc::NLMSG_DONE as u16 || !ours {
        return None;
    }
    let ktime_ns = u64::from_ne_bytes(m.get(TIMESTAMP_NS..TIMESTAMP_NS + 8)?.try_into().ok()?);
    Some(match word(m, WHAT)? {
        PROC_EVENT_NONE => Message::Ack {
            ack: word(m, CN_ACK)?,
            err: word(m, ACK_ERR)?,
        },
        PROC_EVENT_EXEC => Message::Exec {
            pid: word(m, EXEC_PID)?,
            tgid: word(m, EXEC_TGID)?,
            ktime_ns,
        },
        PROC_EVENT_FORK => Message::Fork {
            parent: word(m, FORK_PARENT_TGID)?,
            child_pid: word(m, FORK_CHILD_PID)?,
            child_tgid: word(m, FORK_CHILD_TGID)?,
        },
        PROC_EVENT_EXIT => Message::Exit {
            tid: word(m, EXIT_PID)?,
            tgid: word(m, EXIT_TGID)?,
            code: word(m, EXIT_CODE)?,
            ktime_ns,
        },
        _ => return None,
    })
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// `BPF_MAXINSNS`: the longest classic BPF program the kernel accepts.
pub const BPF_MAXINSNS: usize = 4096;

// Opcodes (`linux/bpf_common.h`), only those emitted here.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LSH_K: u16 = 0x64; // BPF_ALU | BPF_LSH | BPF_K
const ADD_K: u16 = 0x04; // BPF_ALU | BPF_ADD | BPF_K
const SUB_K: u16 = 0x14; // BPF_ALU | BPF_SUB | BPF_K
const OR_X: u16 = 0x4c; // BPF_ALU | BPF_OR | BPF_X
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JEQ_X: u16 = 0x1d; // BPF_JMP | BPF_JEQ | BPF_X
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const ST: u16 = 0x02; // BPF_ST (to M[k])
const LD_MEM: u16 = 0x60; // BPF_LD | BPF_MEM (from M[k])

/// Return values: the bytes of the datagram to keep.
const PASS: u32 = u32::MAX;
const DROP: u32 = 0;

/// Keys compared one by one at the leaves of a search tree.
const BUCKET: usize = 4;

/// Consecutive watched pids, `first..=last`: one key of the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: u32,
    last: u32,
}

/// The runs of the sorted, deduplicated `pids`.
fn runs(pids: &[u32]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &pid in pids {
        match runs.last_mut() {
            Some(run) if run.last.checked_add(1) == Some(pid) => run.last = pid,
            _ => runs.push(Run {
                first: pid,
                last: pid,
            }),
        }
    }
    runs
}

/// Which execs the filter passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execs {
    /// Every exec of a thread-group leader: the connector does not say
    /// which file ran, so user space must look at each.
    All,
    /// Only execs of processes in the watched set (fanotify tells which
    /// other processes are about to execute a watched file).
    Held,
}

/// `RESERVED_PIDS`: where pids start again once they reach `pid_max`.
pub const RESERVED_PIDS: u32 = 300;

/// Which processes count as young: pids are handed out in increasing order
/// up to `pid_max`, then from [`RESERVED_PIDS`] again, so the pids handed
/// out since user space last saw `from` lie just past it on that circle.
/// Forks by processes up to `young` past `from` pass; so do forks whose new
/// pid is `ahead` or more past it, so that user space moves `from` on
/// before new processes are no longer young. Old processes count as young
/// only while their pid is in that window, `young` of every `pid_max` pids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ages {
    pub from: u32,
    pub young: u32,
    pub ahead: u32,
    pub pid_max: u32,
}

impl Ages {
    /// How far past `from` `pid` is, counting round the circle; a pid
    /// below [`RESERVED_PIDS`] (handed out at boot only, not on the circle)
    /// as far as can be.
    pub fn past(&self, pid: u32) -> u32 {
        if pid < RESERVED_PIDS {
            return u32::MAX;
        }
        let d = pid.wrapping_sub(self.from);
        if d >= self.pid_max {
            d.wrapping_add(self.pid_max - RESERVED_PIDS)
        } else {
            d
        }
    }
}

/// A generated program.
#[derive(Debug)]
pub struct Filter {
    pub insns: Vec<sock_filter>,
    /// False when the watched set did not fit and every fork and exit passes.
    pub exact: bool,
}

/// The program for the (sorted or unsorted) set `watched`, passing forks
/// by young processes as `ages` says, and `execs`.
pub fn filter(watched: &[u32], ages: Ages, execs: Execs) -> Filter {
    let mut pids = watched.to_vec();
    pids.sort_unstable();
    pids.dedup();
    let insns = program(Some(&runs(&pids)), ages, execs);
    if insns.len() <= BPF_MAXINSNS {
        return Filter { insns, exact: true };
    }
    Filter {
        insns: program(None, ages, execs),
        exact: false,
    }
}

/// The value a `BPF_W | BPF_ABS` load yields for a host-order field `x`.
fn wire(x: u32) -> u32 {
    u32::from_be_bytes(x.to_ne_bytes())
}

/// The value a `BPF_H | BPF_ABS` load yields for a host-order field `x`.
fn wire16(x: u16) -> u32 {
    u32::from(u16::from_be_bytes(x.to_ne_bytes()))
}

#[derive(Clone, Copy)]
enum Label {
    Exec,
    Fork,
    Exit,
    First,
    Reload,
}

/// An instruction, or a forward jump to a label resolved at the end.
#[derive(Clone, Copy)]
enum Op {
    Insn(sock_filter),
    Goto(Label),
    Here(Label),
}

/// Where a tree's search ends: a verdict, or a jump to a label.
#[derive(Clone, Copy)]
enum Exit {
    Ret(u32),
    Goto(Label),
}

impl Exit {
    fn op(self) -> Op {
        match self {
            Self::Ret(verdict) => stmt(RET_K, verdict),
            Self::Goto(label) => Op::Goto(label),
        }
    }
}

fn stmt(code: u16, k: u32) -> Op {
    jump(code, k, 0, 0)
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Op {
    Op::Insn(sock_filter { code, jt, jf, k })
}

fn load(offset: usize) -> Op {
    stmt(LD_W_ABS, offset as u32)
}

/// Loads the host-order pid at `offset` as a number, which `JGE` can
/// compare: a word load where the host is big-endian, else from its bytes,
/// the most significant first, shifted in through X. Pids stay below
/// `PID_MAX_LIMIT` (2^22): their top byte, zero, is not loaded.
fn load_pid(offset: usize) -> Vec<Op> {
    if cfg!(target_endian = "big") {
        return vec![load(offset)];
    }
    let mut ops = vec![stmt(LD_B_ABS, (offset + 2) as u32)];
    for byte in (0..2).rev() {
        ops.extend([
            stmt(LSH_K, 8),
            stmt(TAX, 0),
            stmt(LD_B_ABS, (offset + byte) as u32),
            stmt(OR_X, 0),
        ]);
    }
    ops
}

/// Passes the datagram when the pid at `offset` is at least `at_least`
/// past `ages.from` ([`Ages::past`]) if `beyond`, or less if not; else, and
/// for a pid below [`RESERVED_PIDS`] (not on the circle), falls through.
fn pass_by_age(offset: usize, ages: Ages, at_least: u32, beyond: bool) -> Vec<Op> {
    let mut ops = load_pid(offset);
    let past = [
        stmt(SUB_K, ages.from),
        jump(JGE_K, ages.pid_max, 0, 1),
        stmt(ADD_K, ages.pid_max - RESERVED_PIDS),
    ];
    let verdict = if beyond {
        [jump(JGE_K, at_least, 0, 1), stmt(RET_K, PASS)]
    } else {
        [jump(JGE_K, at_least, 1, 0), stmt(RET_K, PASS)]
    };
    let skip = (past.len() + verdict.len()) as u8;
    ops.push(jump(JGE_K, RESERVED_PIDS, 0, skip));
    ops.extend(past);
    ops.extend(verdict);
    ops
}

/// `A == k` falls through; anything else drops the datagram.
fn require(k: u32) -> [Op; 2] {
    [jump(JEQ_K, k, 1, 0), stmt(RET_K, DROP)]
}

/// Jumps to `label` when `A == k`.
fn dispatch(k: u32, label: Label) -> [Op; 2] {
    [jump(JEQ_K, k, 0, 1), Op::Goto(label)]
}

/// The whole program; with `keys` None, every fork, exit and exec passes.
/// The searches compare pids as numbers, loaded as [`load_pid`] does.
fn program(keys: Option<&[Run]>, ages: Ages, execs: Execs) -> Vec<sock_filter> {
    use offset::*;
    let mut ops = vec![stmt(LD_H_ABS, NLMSG_TYPE as u32)];
    ops.extend(require(wire16(libc::NLMSG_DONE as u16)));
    ops.extend([load(CN_IDX)].into_iter().chain(require(wire(CN_IDX_PROC))));
    ops.extend([load(CN_VAL)].into_iter().chain(require(wire(CN_VAL_PROC))));
    ops.push(load(WHAT));
    ops.extend(dispatch(wire(PROC_EVENT_EXEC), Label::Exec));
    ops.extend(dispatch(wire(PROC_EVENT_FORK), Label::Fork));
    ops.extend(dispatch(wire(PROC_EVENT_EXIT), Label::Exit));
    // The acknowledgement of a subscription.
    ops.extend([jump(JEQ_K, wire(PROC_EVENT_NONE), 0, 1), stmt(RET_K, PASS)]);
    ops.push(stmt(RET_K, DROP));

    // Exec: pass when pid == tgid (always so once de_thread ran), and with
    // `Execs::Held` when the process is in the set (searched twice, as M[0]
    // holds it too).
    ops.extend([
        Op::Here(Label::Exec),
        load(EXEC_PID),
        stmt(TAX, 0),
        load(EXEC_TGID),
    ]);
    match execs {
        Execs::All => ops.extend([jump(JEQ_X, 0, 0, 1), stmt(RET_K, PASS), stmt(RET_K, DROP)]),
        Execs::Held => {
            ops.extend([jump(JEQ_X, 0, 1, 0), stmt(RET_K, DROP)]);
            ops.extend(load_pid(EXEC_TGID));
            ops.extend([stmt(ST, 0), Op::Goto(Label::First)]);
        }
    }

    // Fork: a new thread (child_pid != child_tgid) of a watched process, or
    // of a watched process's child (its `parent` is the process's parent):
    // followed to know the last one.
    let mut thread = load_pid(FORK_PARENT_TGID);
    thread.push(stmt(ST, 0));
    thread.extend(load_pid(FORK_CHILD_TGID));
    thread.push(Op::Goto(Label::First));
    ops.extend([Op::Here(Label::Fork), load(FORK_CHILD_PID), stmt(TAX, 0)]);
    ops.extend([load(FORK_CHILD_TGID), jump(JEQ_X, 0, thread.len() as u8, 0)]);
    ops.extend(thread);
    // A new process, forked by a young process (a child not held yet: a
    // double fork), or with a pid well past the young ones (user space
    // moves them on), or by a watched process.
    ops.extend(pass_by_age(FORK_PARENT_TGID, ages, ages.young, false));
    ops.extend(pass_by_age(FORK_CHILD_TGID, ages, ages.ahead, true));
    ops.extend(load_pid(FORK_PARENT_TGID));
    ops.extend([stmt(ST, 0), Op::Goto(Label::First)]);

    // Exit of a thread of a watched process, or of a watched process's child
    // (which may end before the filter holds it).
    ops.push(Op::Here(Label::Exit));
    ops.extend(load_pid(EXIT_PARENT_TGID));
    ops.push(stmt(ST, 0));
    ops.extend(load_pid(EXIT_TGID));

    // Two searches of the watched set, for A, then for M[0].
    let pass = Exit::Ret(PASS);
    ops.push(Op::Here(Label::First));
    ops.extend(keys.map_or(vec![pass.op()], |k| {
        tree(k, pass, Exit::Goto(Label::Reload))
    }));
    ops.extend([Op::Here(Label::Reload), stmt(LD_MEM, 0)]);
    ops.extend(keys.map_or(vec![pass.op()], |k| tree(k, pass, Exit::Ret(DROP))));
    resolve(&ops)
}

/// A balanced search for `A` among sorted, disjoint `keys`: a `JGE` per
/// inner node, up to [`BUCKET`] runs per leaf (a `JEQ` for a single pid, a
/// `JGE` and a `JGT` for more), each leaf ending in its own exits so that
/// no conditional jump reaches further than the leaf.
fn tree(keys: &[Run], hit: Exit, miss: Exit) -> Vec<Op> {
    if keys.len() <= BUCKET {
        // Each check that finds `A` jumps over the checks after it and the
        // miss exit, to the hit exit.
        let mut ops: Vec<Op> = Vec::with_capacity(2 * keys.len() + 2);
        let len: usize = keys
            .iter()
            .map(|r| if r.first == r.last { 1 } else { 2 })
            .sum();
        for run in keys {
            if run.first == run.last {
                ops.push(jump(JEQ_K, run.first, (len - ops.len()) as u8, 0));
            } else {
                // Below the run: on to the next one; past it: too.
                ops.push(jump(JGE_K, run.first, 0, 1));
                ops.push(jump(JGT_K, run.last, 0, (len - ops.len()) as u8));
            }
        }
        ops.push(miss.op());
        if !keys.is_empty() {
            ops.push(hit.op());
        }
        return ops;
    }
    // Whole buckets on the left, so that leaves are full.
    let mid = keys.len().div_ceil(BUCKET) / 2 * BUCKET;
    let left = tree(&keys[..mid], hit, miss);
    let right = tree(&keys[mid..], hit, miss);
    let mut ops = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        Ok(skip) => ops.push(jump(JGE_K, keys[mid].first, skip, 0)),
        // Conditional offsets are 8 bits; JA takes 32.
        Err(_) => ops.extend([
            jump(JGE_K, keys[mid].first, 0, 1),
            stmt(JA, left.len() as u32),
        ]),
    }
    ops.extend(left);
    ops.extend(right);
    ops
}

/// Lays out `ops`, turning label jumps into `JA`s with relative offsets.
fn resolve(ops: &[Op]) -> Vec<sock_filter> {
    let mut at = [0usize; 5];
    let mut len = 0;
    for op in ops {
        match op {
            Op::Here(label) => at[*label as usize] = len,
            _ => len += 1,
        }
    }
    let mut insns = Vec::with_capacity(len);
    for op in ops {
        match *op {
            Op::Insn(insn) => insns.push(insn),
            Op::Goto(label) => {
                let next = insns.len() + 1;
                insns.push(sock_filter {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    k: (at[label as usize] - next) as u32,
                });
            }
            Op::Here(_) => {}
        }
    }
    insns
}

#[cfg(test)]
pub(super) mod tests;
