//! The proc connector's netlink socket: subscribing, attaching the socket
//! filter and receiving datagrams ([`connector.h`], [`netlink(7)`]).
//!
//! [`connector.h`]: https://github.com/torvalds/linux/blob/master/include/uapi/linux/connector.h
//! [`netlink(7)`]: https://man7.org/linux/man-pages/man7/netlink.7.html

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    time::Instant,
};

use libc::{c_int, sockaddr_nl, socklen_t};

use super::{
    filter::{self, Message, CN_IDX_PROC, CN_VAL_PROC},
    ProcConnectorError, ACK_TIMEOUT, RCVBUF,
};

pub(super) fn netlink_address(groups: u32) -> sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers; all zero is valid.
    let mut address: sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as u16;
    address.nl_groups = groups;
    address
}

pub(super) fn set_rcvbuf(fd: BorrowedFd) {
    if setsockopt(fd, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
        if let Err(e) = setsockopt(fd, libc::SO_RCVBUF, &RCVBUF) {
            log::warn!(
                "proc connector: cannot enlarge the socket buffer ({e}): bursts may lose events"
            );
        }
    }
}

pub(super) fn attach(fd: BorrowedFd, insns: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SO_ATTACH_FILTER, &program)
}

fn setsockopt<T>(fd: BorrowedFd, option: c_int, value: &T) -> io::Result<()> {
    let (value, len): (*const T, _) = (value, size_of::<T>() as socklen_t);
    // SAFETY: `value` points to a live T of `len` bytes; the kernel copies it.
    if unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, value.cast(), len) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `PROC_CN_MCAST_*` (`words`) to the kernel.
pub(super) fn send_op(fd: BorrowedFd, ack: u32, words: &[u32]) -> io::Result<()> {
    let payload = 4 * words.len();
    let mut message = Vec::with_capacity(36 + payload);
    message.extend(((36 + payload) as u32).to_ne_bytes()); // nlmsg_len
    message.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
    message.extend([0; 10]); // nlmsg_flags, nlmsg_seq, nlmsg_pid
    for word in [CN_IDX_PROC, CN_VAL_PROC, 0, ack] {
        message.extend(word.to_ne_bytes()); // cb_id, seq, ack
    }
    message.extend((payload as u16).to_ne_bytes());
    message.extend(0u16.to_ne_bytes()); // flags
    words
        .iter()
        .for_each(|word| message.extend(word.to_ne_bytes()));
    let kernel = netlink_address(0);
    let kernel_len = size_of::<sockaddr_nl>() as socklen_t;
    let (data, to) = (message.as_ptr().cast(), (&raw const kernel).cast());
    // SAFETY: buffer and address are valid for the lengths given.
    let sent = unsafe { libc::sendto(fd.as_raw_fd(), data, message.len(), 0, to, kernel_len) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the kernel's acknowledgement `ack` of the subscription,
/// keeping the events that arrive meanwhile.
pub(super) fn await_ack(
    fd: BorrowedFd,
    ack: u32,
    buf: &mut [u8],
) -> Result<Vec<Message>, ProcConnectorError> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProcConnectorError::NoAck);
        }
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. EINTR just polls again, to the same deadline.
        unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as c_int) };
        loop {
            match receive(fd, buf) {
                Ok(Some(len)) => filter::decode(&buf[..len], &mut messages),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ProcConnectorError::Subscribe(e)),
            }
        }
        let answer = messages.iter().find_map(|m| match *m {
            Message::Ack { ack: a, err } if a == ack => Some(err),
            _ => None,
        });
        match answer {
            Some(0) => {
                messages.retain(|m| !matches!(m, Message::Ack { .. }));
                return Ok(messages);
            }
            Some(err) => {
                let error = io::Error::from_raw_os_error(err as i32);
                return Err(ProcConnectorError::Subscribe(error));
            }
            None => {}
        }
    }
}

/// What [`receive_batch`] got.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Received {
    /// It read until the socket was empty.
    pub(super) drained: bool,
    /// The socket buffer had overflowed (`ENOBUFS`): datagrams were lost.
    pub(super) lost: bool,
}

/// Receives up to `max` datagrams without blocking and appends their
/// messages to `out`.
pub(super) fn receive_batch(
    fd: BorrowedFd,
    buf: &mut [u8],
    max: usize,
    out: &mut VecDeque<Message>,
) -> io::Result<Received> {
    let mut received = Received::default();
    let mut messages = Vec::new();
    for _ in 0..max {
        match receive(fd, buf) {
            Ok(Some(len)) => filter::decode(&buf[..len], &mut messages),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                received.drained = true;
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => received.lost = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.extend(messages);
    Ok(received)
}

/// Receives one datagram; `None` when it did not come from the kernel.
fn receive(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut from = netlink_address(0);
    let mut from_len = size_of::<sockaddr_nl>() as socklen_t;
    let (data, from_ptr) = (buf.as_mut_ptr().cast(), (&raw mut from).cast());
    // SAFETY: buffer and address are valid for the lengths given.
    let len =
        unsafe { libc::recvfrom(fd.as_raw_fd(), data, buf.len(), 0, from_ptr, &mut from_len) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((from.nl_pid == 0).then_some(len as usize))
}
