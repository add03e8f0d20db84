//! The configuration file (SPEC §2): which executables are watched, and how.
//!
//! [`parse`] is pure and reports the first error with its file, line and
//! column; errors quote at most [`QUOTE_MAX`] characters of what they found.
//! Reading the file and canonicalising its paths is `config_file`'s.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use glob::MatchOptions;

use crate::{
    status::{self, SuccessSet},
    supervisor::RestartPolicy,
};

mod options;

pub use options::{describe, DEFAULT_HOOK_TIMEOUT};

/// Where the daemon looks when no `-c/--config` is given.
pub const DEFAULT_PATH: &str = "/etc/armourd.conf";

/// The largest configuration file armourd reads: a list of paths and
/// globs never comes near it, and a bound keeps a wrong `-c` (a log, a
/// device) from filling memory.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// The most characters of a token an error message quotes.
pub const QUOTE_MAX: usize = 60;

/// The longest path the kernel accepts, in bytes, its final NUL included
/// (`PATH_MAX`).
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// `stop-timeout` when none is given.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Options an entry may carry, in the order error messages list them.
const KNOWN_OPTIONS: [&str; 11] = [
    "success",
    "stop-timeout",
    "restart-delay",
    "backoff",
    "stable-after",
    "give-up",
    "on-crash",
    "recover",
    "hook-timeout",
    "critical",
    "critical-grace",
];

/// The first word of a line that sets options for the entries after it.
const DEFAULTS: &str = "defaults";

/// How a glob is matched, both here and when the file side lists a
/// directory: `*` never crosses a `/`, so `/opt/*` does not reach into
/// `/opt/app/bin`.
pub const GLOB_OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The whole configuration: one entry per non-blank, non-comment line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub entries: Vec<Entry>,
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the line names; canonical after [`load`].
    pub pattern: Pattern,
    /// `success=`: endings that count as clean.
    pub success: SuccessSet,
    /// `stop-timeout=`: grace before SIGKILL for leftovers of a crashed instance.
    pub stop_timeout: Duration,
    /// `critical` / `critical-grace=` (SPEC §12): when an instance gives up
    /// or stays down this long, the hardware watchdog is no longer fed.
    pub critical: Option<Duration>,
    /// `restart-delay=`, `backoff=`, `stable-after=`, `give-up=` (SPEC §8).
    pub restart: RestartPolicy,
    /// `on-crash=`: a shell command run at every abnormal end.
    pub on_crash: Option<String>,
    /// `recover=`: a shell command run instead of the built-in restart.
    pub recover: Option<String>,
    /// `hook-timeout=`: how long `on-crash` and `recover` commands may run.
    pub hook_timeout: Duration,
    /// 1-based line in the file, for log messages.
    pub line: usize,
}

impl Entry {
    /// Whether this entry names the executable at `canonical` (as read from
    /// `/proc/PID/exe`).
    pub fn matches(&self, canonical: &Path) -> bool {
        match &self.pattern {
            Pattern::Path(path) => path == canonical,
            Pattern::Glob(glob) => glob.matches_path_with(canonical, GLOB_OPTIONS),
        }
    }
}

/// A literal path, or a glob when the path contains `*`, `?` or `[`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Path(PathBuf),
    Glob(glob::Pattern),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => path.display().fmt(f),
            Self::Glob(glob) => f.write_str(glob.as_str()),
        }
    }
}

/// Why the configuration could not be used.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The text is wrong at `file:line:column`.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: SyntaxError,
    },
    /// The file could not be read.
    #[error("cannot read configuration file {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The path names something other than a regular file.
    #[error(
        "configuration file {} is a {kind}, not a regular file: armourd reads its configuration \
         only from a text file (make it one, or name one with -c)",
        file.display()
    )]
    NotRegular { file: PathBuf, kind: &'static str },
    /// The file holds more than `limit` bytes.
    #[error(
        "configuration file {} is larger than {} KiB, the most armourd reads: check that it \
         is the right file (a configuration lists paths and globs, one per line)",
        file.display(),
        limit / 1024
    )]
    TooLarge { file: PathBuf, limit: u64 },
}

/// What is wrong at the position a [`ConfigError::Syntax`] names.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SyntaxError {
    #[error("the file is not UTF-8 text (invalid byte 0x{byte:02x})")]
    NotUtf8 { byte: u8 },
    #[error("NUL byte: the file must be plain text (remove it)")]
    Nul,
    #[error("path of {length} bytes, longer than the kernel accepts (at most {} bytes)", PATH_MAX - 1)]
    PathTooLong { length: usize },
    #[error("unterminated quote (expected a closing \")")]
    UnterminatedQuote,
    #[error("expected an absolute path or glob, like /usr/sbin/food, found '{found}'")]
    RelativePath { found: String },
    #[error("invalid glob '{pattern}': {reason}")]
    BadGlob {
        pattern: String,
        reason: &'static str,
    },
    #[error("expected an option like success=0,3, found '{found}' (options are key=value)")]
    MissingEquals { found: String },
    #[error("expected an option name before '=' (known: {})", KNOWN_OPTIONS.join(", "))]
    EmptyOptionName,
    #[error("unknown option '{name}' (known: {})", KNOWN_OPTIONS.join(", "))]
    UnknownOption { name: String },
    #[error("option '{option}' is given twice on this line")]
    DuplicateOption { option: &'static str },
    #[error("empty value for '{option}' (expected {expected})")]
    EmptyValue {
        option: &'static str,
        expected: &'static str,
    },
    #[error("empty item in the success list (expected exit codes and signal names separated by commas, like 0,3,TERM)")]
    EmptyListItem,
    #[error("bad exit code '{found}' (expected 0–255)")]
    BadExitCode { found: String },
    #[error(
        "unknown signal name '{found}' (expected an exit code 0–255 or a signal name like TERM)"
    )]
    UnknownSignal { found: String },
    #[error("duration '{found}' has no unit (add one, like {found}s or {found}ms)")]
    DurationWithoutUnit { found: String },
    #[error("bad duration '{found}' (expected a number and a unit ms, s, m or h, like 5s, 1.5s or 500ms)")]
    BadDuration { found: String },
    #[error("duration '{found}' is too long")]
    DurationTooLong { found: String },
    #[error("bad value '{found}' for 'critical' (expected yes or no, or just the word critical)")]
    BadCritical { found: String },
    #[error("bad backoff '{found}' (expected MIN..MAX like 100ms..30s, or none)")]
    BadBackoff { found: String },
    #[error("backoff '{found}' starts above its maximum (expected MIN..MAX with MIN <= MAX)")]
    BackoffReversed { found: String },
    #[error("bad give-up '{found}' (expected CRASHES/WINDOW like 5/60s, with CRASHES at least 1)")]
    BadGiveUp { found: String },
}

/// A [`SyntaxError`] and the 1-based column it is at.
type Located = (usize, SyntaxError);

/// Parses the text of a configuration file named `file` (used only in
/// errors). Pure: paths are taken as written, see [`load`].
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut entries = Vec::new();
    // What a `defaults` line set, for the entries after it.
    let mut defaults = Entry::new(Pattern::Path(PathBuf::from("/")), 0);
    for (line, text) in (1..).zip(text.lines()) {
        let entry = reject_nul(text)
            .and_then(|()| tokenize(text))
            .and_then(|tokens| parse_line(&tokens, line, &mut defaults));
        match entry {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err((column, message)) => {
                return Err(ConfigError::Syntax {
                    file: file.to_path_buf(),
                    line,
                    column,
                    message,
                })
            }
        }
    }
    Ok(Config { entries })
}

/// The text of the configuration file `file` (named in errors) whose
/// content is `bytes`; pure, like [`parse`]. Bytes that are not UTF-8 are
/// an error at their line and column.
pub fn decode(bytes: Vec<u8>, file: &Path) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|error| {
        let bytes = error.as_bytes();
        let valid = &bytes[..error.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        // The valid part is UTF-8: its characters give the column.
        let before = std::str::from_utf8(&valid[line_start..]).unwrap_or_default();
        ConfigError::Syntax {
            file: file.to_path_buf(),
            line: valid.iter().filter(|b| **b == b'\n').count() + 1,
            column: before.chars().count() + 1,
            message: SyntaxError::NotUtf8 {
                byte: bytes[valid.len()],
            },
        }
    })
}

/// `text` as an error quotes it: at most [`QUOTE_MAX`] characters, with an
/// ellipsis when there were more, control characters escaped.
fn excerpt(text: &str) -> String {
    let mut quoted = String::new();
    for c in text.chars().take(QUOTE_MAX) {
        if c.is_control() {
            quoted.extend(c.escape_default());
        } else {
            quoted.push(c);
        }
    }
    if text.chars().nth(QUOTE_MAX).is_some() {
        quoted.push('…');
    }
    quoted
}

/// The column of the first NUL in `line`: a text file has none, and a
/// path could not hold one.
fn reject_nul(line: &str) -> Result<(), Located> {
    match line.chars().position(|c| c == '\0') {
        Some(index) => Err((index + 1, SyntaxError::Nul)),
        None => Ok(()),
    }
}

/// One blank-separated word of a line with its quotes removed. Each
/// character keeps its source column so errors can point inside the word.
struct Token {
    chars: Vec<(char, usize)>,
    /// Where the word starts (its opening quote, if any).
    column: usize,
    /// Index in `chars` of the first `=` outside quotes: `a"="b` is no option.
    equals: Option<usize>,
}

impl Token {
    fn text(&self) -> String {
        self.chars.iter().map(|(c, _)| c).collect()
    }

    /// The word as an error quotes it.
    fn excerpt(&self) -> String {
        excerpt(&self.text())
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits a line into words, stopping at a `#` that starts a word.
fn tokenize(line: &str) -> Result<Vec<Token>, Located> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().zip(1..).peekable();
    loop {
        while chars.next_if(|(c, _)| is_blank(*c)).is_some() {}
        let Some(&(first, column)) = chars.peek() else {
            break;
        };
        if first == '#' {
            break;
        }
        let mut token = Token {
            chars: Vec::new(),
            column,
            equals: None,
        };
        while let Some((c, col)) = chars.next_if(|(c, _)| !is_blank(*c)) {
            match c {
                '"' => read_quoted(&mut chars, col, &mut token.chars)?,
                '=' if token.equals.is_none() => {
                    token.equals = Some(token.chars.len());
                    token.chars.push((c, col));
                }
                _ => token.chars.push((c, col)),
            }
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// Reads up to the closing quote of a quote opened at column `open`. Only
/// `\"` and `\\` are escapes; any other backslash is kept as written.
fn read_quoted(
    chars: &mut impl Iterator<Item = (char, usize)>,
    open: usize,
    out: &mut Vec<(char, usize)>,
) -> Result<(), Located> {
    while let Some((c, col)) = chars.next() {
        match c {
            '"' => return Ok(()),
            '\\' => match chars.next() {
                Some((escaped @ ('"' | '\\'), _)) => out.push((escaped, col)),
                Some(other) => out.extend([(c, col), other]),
                None => break,
            },
            _ => out.push((c, col)),
        }
    }
    Err((open, SyntaxError::UnterminatedQuote))
}

impl Entry {
    /// An entry with every option at its default.
    fn new(pattern: Pattern, line: usize) -> Self {
        Self {
            pattern,
            success: SuccessSet::default(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            critical: None,
            restart: RestartPolicy::default(),
            on_crash: None,
            recover: None,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            line,
        }
    }
}

/// The entry on one line, or `None` for a blank or comment line. A
/// `defaults` line changes `defaults`, which every later entry starts from.
fn parse_line(
    tokens: &[Token],
    line: usize,
    defaults: &mut Entry,
) -> Result<Option<Entry>, Located> {
    let Some((first, options)) = tokens.split_first() else {
        return Ok(None);
    };
    if first.equals.is_none() && first.text() == DEFAULTS {
        let mut seen = Vec::new();
        let mut critical = critical::Options::default();
        for option in options {
            if !critical.take(option)? {
                apply_option(defaults, option, &mut seen)?;
            }
        }
        defaults.critical = critical.finish(defaults.critical);
        return Ok(None);
    }
    let mut entry = Entry {
        pattern: parse_pattern(first)?,
        line,
        ..defaults.clone()
    };
    let mut seen = Vec::new();
    let mut critical = critical::Options::default();
    for option in options {
        if !critical.take(option)? {
            apply_option(&mut entry, option, &mut seen)?;
        }
    }
    entry.critical = critical.finish(entry.critical);
    Ok(Some(entry))
}

/// A path with a glob metacharacter is a glob. Quoting only protects blanks;
/// a literal `*` is written `[*]`, as in any glob.
fn parse_pattern(token: &Token) -> Result<Pattern, Located> {
    let text = token.text();
    if !text.starts_with('/') {
        let found = excerpt(&text);
        return Err((token.column, SyntaxError::RelativePath { found }));
    }
    // Checked here: resolving a path of many components costs one look-up
    // per ancestor, each as long as the path.
    if text.len() >= PATH_MAX {
        let length = text.len();
        return Err((token.column, SyntaxError::PathTooLong { length }));
    }
    if !text.contains(['*', '?', '[']) {
        return Ok(Pattern::Path(PathBuf::from(text)));
    }
    glob::Pattern::new(&text).map(Pattern::Glob).map_err(|e| {
        let column = token.chars.get(e.pos).map_or(token.column, |(_, col)| *col);
        let message = SyntaxError::BadGlob {
            pattern: excerpt(&text),
            reason: e.msg,
        };
        (column, message)
    })
}

fn apply_option(
    entry: &mut Entry,
    token: &Token,
    seen: &mut Vec<&'static str>,
) -> Result<(), Located> {
    let Some(equals) = token.equals else {
        return Err((
            token.column,
            SyntaxError::MissingEquals {
                found: token.excerpt(),
            },
        ));
    };
    let name: String = token.chars[..equals].iter().map(|(c, _)| c).collect();
    let Some(&option) = KNOWN_OPTIONS.iter().find(|known| **known == name) else {
        let message = if name.is_empty() {
            SyntaxError::EmptyOptionName
        } else {
            SyntaxError::UnknownOption {
                name: excerpt(&name),
            }
        };
        return Err((token.column, message));
    };
    if seen.contains(&option) {
        return Err((token.column, SyntaxError::DuplicateOption { option }));
    }
    seen.push(option);
    let value = &token.chars[equals + 1..];
    // Where the value starts, or would start when it is empty.
    let value_column = token.chars[equals].1 + 1;
    if value.is_empty() {
        let expected = options::expected(option);
        return Err((value_column, SyntaxError::EmptyValue { option, expected }));
    }
    let text: String = value.iter().map(|(c, _)| c).collect();
    match option {
        "success" => {
            let end_column = value.last().map_or(value_column, |(_, col)| col + 1);
            entry.success = parse_success(value, end_column)?;
        }
        "stop-timeout" => {
            entry.stop_timeout = parse_duration(&text).map_err(|e| (value_column, e))?;
        }
        _ => options::apply(entry, option, text).map_err(|e| (value_column, e))?,
    }
    Ok(())
}

/// A comma-separated list of exit codes and signal names; blanks around
/// items (possible inside quotes) are ignored.
fn parse_success(value: &[(char, usize)], end_column: usize) -> Result<SuccessSet, Located> {
    let mut set = SuccessSet::empty();
    let mut start = 0;
    let ends = (0..value.len()).filter(|i| value[*i].0 == ',');
    for end in ends.chain([value.len()]) {
        let item = &value[start..end];
        let first = item.iter().position(|(c, _)| !c.is_whitespace());
        let last = item.iter().rposition(|(c, _)| !c.is_whitespace());
        let item = first
            .zip(last)
            .map_or(&[][..], |(first, last)| &item[first..=last]);
        // An empty item is pointed at by the comma that ends it.
        let column = item
            .first()
            .or(value.get(start))
            .map_or(end_column, |(_, col)| *col);
        let text: String = item.iter().map(|(c, _)| c).collect();
        add_success_item(&mut set, &text).map_err(|e| (column, e))?;
        start = end + 1;
    }
    Ok(set)
}

fn add_success_item(set: &mut SuccessSet, text: &str) -> Result<(), SyntaxError> {
    if text.is_empty() {
        return Err(SyntaxError::EmptyListItem);
    }
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        let code = text.parse().map_err(|_| SyntaxError::BadExitCode {
            found: excerpt(text),
        })?;
        set.add_code(code);
        return Ok(());
    }
    let signal = status::signal_number(text).ok_or_else(|| SyntaxError::UnknownSignal {
        found: excerpt(text),
    })?;
    set.add_signal(signal);
    Ok(())
}

/// `5s`, `500ms`, `2m`, `1h`, `1.5s`. A unit is required: a bare `5` could
/// mean seconds or milliseconds, and guessing wrong is silent.
fn parse_duration(text: &str) -> Result<Duration, SyntaxError> {
    let bad = || SyntaxError::BadDuration {
        found: excerpt(text),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    if whole.is_empty() || fraction.is_empty() || fraction.contains('.') {
        return Err(bad());
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(SyntaxError::DurationWithoutUnit {
                found: excerpt(text),
            })
        }
        _ => return Err(bad()),
    };
    // Exact decimal arithmetic, so 1.1s is 1_100_000_000ns and not a float's guess.
    let too_long = || SyntaxError::DurationTooLong {
        found: excerpt(text),
    };
    let mantissa: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| too_long())?;
    let scale = 10u128
        .checked_pow(fraction.len() as u32)
        .ok_or_else(too_long)?;
    let nanos = mantissa.checked_mul(unit_nanos).ok_or_else(too_long)? / scale;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// The `critical` and `critical-grace=` options, read apart from the
/// others: `critical` may stand alone, without a value.
mod critical {
    use std::time::Duration;

    use super::{parse_duration, Located, SyntaxError, Token};
    use crate::watchdog::critical::DEFAULT_GRACE;

    #[derive(Default)]
    pub(super) struct Options {
        critical: Option<bool>,
        grace: Option<Duration>,
    }

    impl Options {
        /// Takes `token` if it is one of these options.
        pub(super) fn take(&mut self, token: &Token) -> Result<bool, Located> {
            let text = token.text();
            let (name, value) = match token.equals {
                Some(_) => text.split_once('=').unwrap_or((&text, "")),
                None => (text.as_str(), "yes"),
            };
            let value_column = token.column + name.chars().count() + 1;
            match name {
                "critical" => {
                    self.critical = match value {
                        "yes" | "true" | "1" => Some(true),
                        "no" | "false" | "0" => Some(false),
                        _ => {
                            let found = value.to_owned();
                            return Err((value_column, SyntaxError::BadCritical { found }));
                        }
                    };
                }
                "critical-grace" if token.equals.is_some() => {
                    if value.is_empty() {
                        let (option, expected) = ("critical-grace", "a duration, like 60s");
                        return Err((value_column, SyntaxError::EmptyValue { option, expected }));
                    }
                    self.grace = Some(parse_duration(value).map_err(|e| (value_column, e))?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        }

        /// The grace of a critical entry, `None` for any other; `default`
        /// (from a `defaults` line) where neither option was given. A grace
        /// alone makes the entry critical too.
        pub(super) fn finish(self, default: Option<Duration>) -> Option<Duration> {
            if self.critical.is_none() && self.grace.is_none() {
                return default;
            }
            let critical = self.critical.unwrap_or(true);
            critical.then(|| self.grace.or(default).unwrap_or(DEFAULT_GRACE))
        }
    }
}

#[cfg(test)]
mod tests;
