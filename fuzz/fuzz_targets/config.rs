//! `config::parse` over any bytes: as text when they are UTF-8, else as the
//! lossy text (U+FFFD for each bad sequence) a byte-reading loader would
//! make of them. Whatever it returns must be consistent with the text.

#![no_main]

use std::path::Path;

use armourd::config::{self, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
});

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A line that holds something: not blank, not a comment.
fn holds_something(line: &str) -> bool {
    line.trim_start_matches(is_blank)
        .chars()
        .next()
        .is_some_and(|c| c != '#')
}

/// The text of a line's first word as the parser reads it: quotes join
/// what they hold to the word (`defaults""` and `"defaults"` are
/// `defaults`); in them only `\"` and `\\` are escapes.
fn first_word(line: &str) -> String {
    let mut word = String::new();
    let mut chars = line.trim_start_matches(is_blank).chars();
    while let Some(c) = chars.next() {
        match c {
            c if is_blank(c) => break,
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(escaped @ ('"' | '\\')) => word.push(escaped),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => word.push('\\'),
                        },
                        c => word.push(c),
                    }
                }
            }
            c => word.push(c),
        }
    }
    word
}

/// A line that holds an entry: something, and not a `defaults` line.
fn holds_entry(line: &str) -> bool {
    holds_something(line) && first_word(line) != "defaults"
}

fn check(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    match config::parse(text, Path::new("fuzz.conf")) {
        Ok(config) => {
            // One entry per line that holds one, in order, with its line.
            let expected: Vec<usize> = (1..)
                .zip(&lines)
                .filter(|(_, line)| holds_entry(line))
                .map(|(number, _)| number)
                .collect();
            let got: Vec<usize> = config.entries.iter().map(|e| e.line).collect();
            assert_eq!(got, expected, "entries and the lines holding them differ");
            for entry in &config.entries {
                assert!(entry.pattern.to_string().starts_with('/'));
                // Matching is what the daemon does with each exec: it must
                // not panic or take long on any pattern.
                entry.matches(Path::new("/usr/sbin/food"));
                entry.matches(Path::new("/opt/app/bin/a b[*]"));
            }
        }
        Err(error @ ConfigError::Syntax { line, column, .. }) => {
            // The position is in the text: a line, and a column on it or
            // just past its end.
            let text_line = lines
                .get(line.wrapping_sub(1))
                .unwrap_or_else(|| panic!("error on line {line} of {}: {error}", lines.len()));
            let width = text_line.chars().count();
            assert!(
                (1..=width + 1).contains(&column),
                "error at column {column} of a line of {width} characters: {error}"
            );
            // A NUL byte is an error wherever it stands, comments included.
            assert!(
                holds_something(text_line) || text_line.contains('\0'),
                "error on a blank or comment line"
            );
            let _ = error.to_string();
        }
        // Errors without a position in the text: only their message is made.
        Err(error) => {
            let _ = error.to_string();
        }
    }
}
