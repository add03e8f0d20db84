//! `state::parse` over any bytes, as the lossy text a byte-reading loader
//! would make of them: never a panic, and what it accepts is exactly what
//! `render` writes back (a file of the older format 1 as format 2: the
//! same lines under the new version line).

#![no_main]

use armourd::fuzz::{
    parse_state as parse, render_state as render, StateError, STATE_VERSION as VERSION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(state) => {
            let current = match text.strip_prefix("armourd-state 1\n") {
                Some(rest) => {
                    assert!(state.waiting.is_empty(), "format 1 has no waiting instances");
                    format!("armourd-state {VERSION}\n{rest}")
                }
                None => text.clone().into_owned(),
            };
            assert_eq!(render(&state), current, "accepted text is the one spelling of its state");
            let records = state.instances.len() + state.waiting.len();
            assert_eq!(text.lines().count(), records + 2);
        }
        Err(StateError::Newer { found }) => assert!(found > VERSION),
        Err(StateError::Damaged { line, .. }) => {
            assert!(line >= 2 && line <= text.lines().count().max(2), "line {line}")
        }
        Err(StateError::NotState) => {}
    }
});
