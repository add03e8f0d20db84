//! `state::parse` over any bytes, as the lossy text a byte-reading loader
//! would make of them: never a panic, and what it accepts is exactly what
//! `render` writes back.

#![no_main]

use armourd::fuzz::{
    parse_state as parse, render_state as render, StateError, STATE_VERSION as VERSION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(state) => {
            assert_eq!(render(&state), text, "accepted text is the one spelling of its state");
            assert_eq!(text.lines().count(), state.instances.len() + 2);
        }
        Err(StateError::Newer { found }) => assert!(found > VERSION),
        Err(StateError::Damaged { line, .. }) => {
            assert!(line >= 2 && line <= text.lines().count().max(2), "line {line}")
        }
        Err(StateError::NotState) => {}
    }
});
