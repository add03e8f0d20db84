use super::*;

/// Runs `insns` on `packet` as the kernel's classic BPF interpreter
/// would (only the opcodes emitted above), checking on the way what
/// `bpf_check_classic` checks: jumps stay inside, the end is a return.
/// Returns the verdict and the number of instructions executed.
fn run(insns: &[sock_filter], packet: &[u8]) -> (u32, usize) {
    assert!(insns.len() <= BPF_MAXINSNS);
    assert_eq!(insns.last().map(|i| i.code), Some(RET_K));
    let (mut a, mut x, mut pc, mut steps) = (0u32, 0u32, 0usize, 0);
    let mut mem = [None::<u32>; 16];
    loop {
        let insn = insns[pc];
        pc += 1;
        steps += 1;
        let k = insn.k as usize;
        let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            LD_W_ABS | LD_H_ABS => {
                let width = if insn.code == LD_W_ABS { 4 } else { 2 };
                let Some(bytes) = packet.get(k..k + width) else {
                    return (0, steps); // out of bounds: the kernel drops
                };
                a = bytes.iter().fold(0, |v, &b| (v << 8) | u32::from(b));
            }
            LD_B_ABS => match packet.get(k) {
                Some(&byte) => a = u32::from(byte),
                None => return (0, steps),
            },
            LSH_K => a <<= insn.k,
            ADD_K => a = a.wrapping_add(insn.k),
            SUB_K => a = a.wrapping_sub(insn.k),
            OR_X => a |= x,
            TAX => x = a,
            ST => mem[k] = Some(a),
            LD_MEM => a = mem[k].expect("M[k] read before written"),
            JA => pc += k,
            JEQ_K => pc += cond(a == insn.k),
            JEQ_X => pc += cond(a == x),
            JGE_K => pc += cond(a >= insn.k),
            JGT_K => pc += cond(a > insn.k),
            RET_K => return (insn.k, steps),
            code => panic!("unexpected opcode {code:#x}"),
        }
        assert!(pc < insns.len(), "jump out of the program");
    }
}

/// A datagram as the kernel sends it: nlmsghdr, cn_msg, proc_event.
pub(in crate::backend) fn datagram(what: u32, data: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(76);
    b.extend(76u32.to_ne_bytes()); // nlmsg_len
    b.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
    b.extend([0; 10]); // nlmsg_flags, nlmsg_seq, nlmsg_pid
    for word in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
        b.extend(word.to_ne_bytes()); // idx, val, seq, ack
    }
    b.extend(40u16.to_ne_bytes()); // len
    b.extend([0; 2]); // flags
    b.extend(what.to_ne_bytes());
    b.extend(1u32.to_ne_bytes()); // cpu
    b.extend(7u64.to_ne_bytes()); // timestamp_ns
    data.iter().for_each(|word| b.extend(word.to_ne_bytes()));
    b.resize(76, 0);
    b
}

pub(in crate::backend) fn exec(pid: u32, tgid: u32) -> Vec<u8> {
    datagram(PROC_EVENT_EXEC, &[pid, tgid])
}
pub(in crate::backend) fn fork(parent: u32, child_pid: u32, child_tgid: u32) -> Vec<u8> {
    datagram(PROC_EVENT_FORK, &[parent, parent, child_pid, child_tgid])
}
pub(in crate::backend) fn exit(tid: u32, tgid: u32, code: u32, parent: u32) -> Vec<u8> {
    datagram(PROC_EVENT_EXIT, &[tid, tgid, code, 17, parent, parent])
}

fn passes(f: &Filter, packet: &[u8]) -> bool {
    run(&f.insns, packet).0 != 0
}

#[test]
fn datagrams_decode_to_messages() {
    let mut out = Vec::new();
    let mut two = exit(7, 6, 0x300, 5);
    two.extend(exit(6, 6, 0x8b, 5));
    let mut ack = datagram(PROC_EVENT_NONE, &[12]);
    ack[offset::CN_ACK] = 9;
    let comm = datagram(0x200, &[5, 5]);
    for packet in [
        exec(5, 5),
        fork(5, 6, 6),
        two,
        comm,
        exit(6, 6, 0, 5)[..50].into(),
        ack,
    ] {
        decode(&packet, &mut out);
    }
    let expected = [
        Message::Exec {
            pid: 5,
            tgid: 5,
            ktime_ns: 7,
        },
        Message::Fork {
            parent: 5,
            child_pid: 6,
            child_tgid: 6,
        },
        Message::Exit {
            tid: 7,
            tgid: 6,
            code: 0x300,
            ktime_ns: 7,
        },
        Message::Exit {
            tid: 6,
            tgid: 6,
            code: 0x8b,
            ktime_ns: 7,
        },
        Message::Ack { ack: 9, err: 12 },
    ];
    assert_eq!(out, expected);
}

#[test]
fn execs_of_leaders_pass() {
    let f = filter(&[], ages(1000), Execs::All);
    assert!(passes(&f, &exec(100, 100)));
    assert!(!passes(&f, &exec(101, 100)));
}

#[test]
fn held_execs_pass_only_for_processes_in_the_set() {
    let f = filter(&[100, 70_000], ages(5000), Execs::Held);
    assert!(passes(&f, &exec(100, 100)));
    assert!(passes(&f, &exec(70_000, 70_000)));
    assert!(!passes(&f, &exec(101, 101)), "another process");
    assert!(
        !passes(&f, &exec(9000, 9000)),
        "newer than the filter: still dropped"
    );
    assert!(!passes(&f, &exec(101, 100)), "not a leader");
    // Forks and exits are judged as with every exec passing.
    assert!(passes(&f, &fork(100, 101, 101)));
    assert!(passes(&f, &exit(100, 100, 0, 1)));
    assert!(!passes(&f, &exit(101, 101, 0, 1)));
}

#[test]
fn too_many_pids_pass_every_held_exec() {
    let f = filter(&pids(5000), ages(1000), Execs::Held);
    assert!(!f.exact);
    assert!(passes(&f, &exec(7, 7)));
}

/// A window of young processes from `from`, on a machine with a large pid_max.
fn ages(from: u32) -> Ages {
    Ages {
        from,
        young: 2048,
        ahead: 1024,
        pid_max: 4_194_304,
    }
}

/// No process is young, and no new pid moves the window on.
fn old() -> Ages {
    Ages {
        from: 0,
        young: 0,
        ahead: u32::MAX,
        pid_max: 4_194_304,
    }
}

#[test]
fn forks_pass_by_watched_processes_and_by_young_ones() {
    let f = filter(&[100, 70_000], ages(5000), Execs::All);
    assert!(passes(&f, &fork(100, 6000, 6000)), "by a watched process");
    assert!(passes(&f, &fork(70_000, 6001, 6001)), "by another");
    assert!(
        passes(&f, &fork(5000, 6002, 6002)),
        "by the oldest young one"
    );
    // Numbers whose bytes order them differently than their values.
    for young in [5001, 5376, 7047] {
        assert!(passes(&f, &fork(young, 6003, 6003)), "by {young}");
    }
    for older in [1, 101, 4999, 4864, 255, 256, 7048, 65_536 + 7, 4_194_303] {
        assert!(!passes(&f, &fork(older, 6004, 6004)), "by {older}");
    }
}

#[test]
fn young_processes_are_counted_round_the_wrap() {
    let ages = Ages {
        from: 31_500,
        young: 2048,
        ahead: 1024,
        pid_max: 32_768,
    };
    let f = filter(&[], ages, Execs::All);
    for young in [31_500, 32_767, 300, 1079] {
        assert!(passes(&f, &fork(young, 31_600, 31_600)), "by {young}");
    }
    for old in [100, 299, 1080, 20_000, 31_499] {
        assert!(!passes(&f, &fork(old, 31_600, 31_600)), "by {old}");
    }
}

#[test]
fn a_fork_past_the_first_half_of_the_window_passes_to_move_it_on() {
    let ages = Ages {
        from: 31_500,
        young: 2048,
        ahead: 1024,
        pid_max: 32_768,
    };
    let f = filter(&[], ages, Execs::All);
    for far in [32_524, 32_767, 400, 20_000] {
        assert!(passes(&f, &fork(20_000, far, far)), "new pid {far}");
    }
    for near in [31_500, 32_523, 100] {
        assert!(!passes(&f, &fork(20_000, near, near)), "new pid {near}");
    }
}

#[test]
fn other_events_and_foreign_datagrams_are_dropped() {
    let f = filter(&[100], ages(1000), Execs::All);
    for what in [0x4, 0x40, 0x80, 0x100, 0x200, 0x2000_0000, 0x4000_0000] {
        assert!(!passes(&f, &datagram(what, &[100, 100])), "what {what:#x}");
    }
    assert!(
        passes(&f, &datagram(PROC_EVENT_NONE, &[0])),
        "the acknowledgement"
    );
    let mut foreign = exit(100, 100, 0, 1);
    foreign[offset::CN_IDX] = 2;
    let mut error = exit(100, 100, 0, 1);
    error[offset::NLMSG_TYPE] = libc::NLMSG_ERROR as u8;
    let truncated = &exit(100, 100, 0, 1)[..58];
    assert!(![&foreign[..], &error, truncated]
        .iter()
        .any(|p| passes(&f, p)));
}

#[test]
fn threads_pass_of_watched_processes_and_their_children() {
    let f = filter(&[100, 200], ages(1000), Execs::All);
    assert!(
        passes(&f, &fork(1, 301, 100)),
        "a new thread of a watched process"
    );
    assert!(
        passes(&f, &fork(200, 302, 150)),
        "of a watched process's child"
    );
    assert!(!passes(&f, &fork(1, 303, 150)));
    assert!(passes(&f, &exit(100, 100, 0, 1)));
    assert!(
        passes(&f, &exit(205, 200, 0, 1)),
        "a thread of a watched process ends"
    );
    assert!(
        passes(&f, &exit(300, 300, 0, 200)),
        "a child not yet watched ends"
    );
    assert!(!passes(&f, &exit(300, 300, 0, 1)));
}

/// Pids whose byte-swapped order differs from their numeric order.
fn pids(n: u32) -> Vec<u32> {
    (0..n).map(|i| 3 + i * 257 + (i % 7) * 65_536).collect()
}

#[test]
fn every_watched_pid_and_no_other_is_found_at_every_size() {
    for n in (0..40).chain([100, 255, 256, 500, 1000, 1130]) {
        let watched = pids(n);
        let f = filter(&watched, old(), Execs::All);
        assert!(f.exact, "{n} pids");
        for &pid in &watched {
            let found = [
                exit(pid, pid, 0, 1),
                exit(9, 9, 0, pid),
                fork(1, 9, pid),
                fork(pid, 9, 10),
                fork(pid, 9, 9),
            ];
            assert!(found.iter().all(|p| passes(&f, p)), "{pid} of {n}");
            let (below, above) = (pid - 1, pid + 1);
            let not = [
                exit(above, above, 0, 1),
                exit(9, 9, 0, below),
                fork(1, 9, below),
                fork(above, 9, 9),
            ];
            assert!(!not.iter().any(|p| passes(&f, p)), "near {pid} of {n}");
        }
    }
}

#[test]
fn runs_of_consecutive_pids_are_found_whole_and_nothing_beside_them() {
    // Runs of every length up to past a bucket, among single pids.
    let mut watched = Vec::new();
    let mut next = 400;
    for len in (1..12).chain([1, 300, 1, 2, 1]) {
        watched.extend(next..next + len);
        next += len + 2 + len % 3;
    }
    let f = filter(&watched, old(), Execs::Held);
    assert!(f.exact);
    for pid in 398..next + 2 {
        let watched = watched.contains(&pid);
        for p in [
            exit(pid, pid, 0, 1),
            exit(9, 9, 0, pid),
            fork(pid, 9, 9),
            exec(pid, pid),
        ] {
            assert_eq!(passes(&f, &p), watched, "{pid}");
        }
    }
}

#[test]
fn a_burst_of_consecutive_restarts_makes_a_short_program() {
    let scattered = filter(&pids(1000), old(), Execs::Held).insns.len();
    // A thousand restarts in a row, a few other pids, and armourd's own.
    let mut burst: Vec<u32> = (20_000..21_000).collect();
    burst.extend([7_000, 7_002, 300]);
    let consecutive = filter(&burst, old(), Execs::Held).insns.len();
    assert!(consecutive < 200, "{consecutive} instructions");
    assert!(scattered > 3_000, "{scattered} instructions");
}

#[test]
fn a_datagram_costs_logarithmic_instructions() {
    let watched = pids(1130);
    let f = filter(&watched, old(), Execs::All);
    let most = (watched.iter().flat_map(|&p| [p, p + 1]))
        .map(|pid| run(&f.insns, &exit(pid, pid, 0, 1)).1)
        .max();
    // The fixed part and two pids loaded byte by byte, then two searches
    // of depth log2(1130 / 4) + a bucket.
    assert!(most.unwrap() <= 64, "{most:?} instructions");
}

#[test]
fn too_many_pids_pass_every_fork_and_exit() {
    let fits = (1..3000)
        .take_while(|&n| filter(&pids(n), ages(1000), Execs::All).exact)
        .last();
    assert!(fits >= Some(1130), "only {fits:?} pids fit");
    let f = filter(&pids(fits.unwrap() + 1), ages(1000), Execs::All);
    assert!(!f.exact);
    let all = [exit(99_999, 99_999, 0, 1), fork(1, 9, 99_998), exec(7, 7)];
    assert!(all.iter().all(|p| passes(&f, p)));
}
