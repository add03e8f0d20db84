//! The proc connector's datagram decoder over any bytes. A datagram is a
//! run of netlink messages, each `nlmsg_len` long and 4-byte aligned
//! (netlink(7)): decoding it whole must give what decoding each message
//! alone gives, at most one proc event from each, and only from messages
//! of the proc connector.

#![no_main]

use armourd::fuzz::decode_datagram;
use libfuzzer_sys::fuzz_target;

/// `struct nlmsghdr` (16 bytes), `struct cn_msg` (20) and the head of
/// `struct proc_event` (16, up to its union): the least a message holds.
const HEADERS: usize = 16 + 20 + 16;

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    decode_datagram(data, &mut whole);
    assert!(
        whole.len() * HEADERS <= data.len(),
        "{} messages from {} bytes",
        whole.len(),
        data.len()
    );
    let mut each = Vec::new();
    for message in messages(data) {
        let before = each.len();
        decode_datagram(message, &mut each);
        assert!(each.len() - before <= 1, "one message gave several events");
        if each.len() > before {
            assert_eq!(
                u16::from_ne_bytes([message[4], message[5]]),
                3,
                "not NLMSG_DONE"
            );
            assert_eq!(word(message, 16), 1, "not CN_IDX_PROC");
            assert_eq!(word(message, 20), 1, "not CN_VAL_PROC");
        }
    }
    assert_eq!(whole, each);
});

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The netlink messages of a datagram, as `NLMSG_OK` and `NLMSG_NEXT` walk it.
fn messages(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(..4)?.try_into().unwrap()) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let message = &rest[..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(message)
    })
}
