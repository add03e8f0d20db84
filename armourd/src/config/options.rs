//! The options of SPEC §8 (restart policy and hooks): their values, and
//! how `--check-config` writes an entry's options back out.

use std::time::Duration;

use super::{excerpt, parse_duration, Entry, SyntaxError};
use crate::{
    status::{self, SuccessSet},
    supervisor::{Backoff, GiveUp},
};

/// `hook-timeout` when none is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What an option's value looks like, for an error about an empty one.
pub(super) fn expected(option: &str) -> &'static str {
    match option {
        "success" => "exit codes and signal names, like 0,3,TERM",
        "backoff" => "MIN..MAX like 100ms..30s, or none",
        "give-up" => "CRASHES/WINDOW like 5/60s",
        "on-crash" | "recover" => "a shell command, quoted when it has blanks",
        _ => "a duration, like 5s or 500ms",
    }
}

/// Sets one of the §8 options of `entry` from its (non-empty) value.
pub(super) fn apply(entry: &mut Entry, option: &str, value: String) -> Result<(), SyntaxError> {
    let restart = &mut entry.restart;
    match option {
        "restart-delay" => restart.restart_delay = parse_duration(&value)?,
        "stable-after" => restart.stable_after = parse_duration(&value)?,
        "hook-timeout" => entry.hook_timeout = parse_duration(&value)?,
        "backoff" => restart.backoff = parse_backoff(&value)?,
        "give-up" => restart.give_up = Some(parse_give_up(&value)?),
        "on-crash" => entry.on_crash = Some(value),
        "recover" => entry.recover = Some(value),
        _ => unreachable!("option {option} is in KNOWN_OPTIONS but not handled"),
    }
    Ok(())
}

/// `MIN..MAX` or `none`.
fn parse_backoff(text: &str) -> Result<Option<Backoff>, SyntaxError> {
    if text == "none" {
        return Ok(None);
    }
    let (min, max) = text
        .split_once("..")
        .ok_or_else(|| SyntaxError::BadBackoff { found: text.into() })?;
    let (min, max) = (parse_duration(min)?, parse_duration(max)?);
    if min > max {
        return Err(SyntaxError::BackoffReversed {
            found: excerpt(text),
        });
    }
    Ok(Some(Backoff { min, max }))
}

/// `CRASHES/WINDOW`, CRASHES at least 1.
fn parse_give_up(text: &str) -> Result<GiveUp, SyntaxError> {
    let bad = || SyntaxError::BadGiveUp {
        found: excerpt(text),
    };
    let (crashes, window) = text.split_once('/').ok_or_else(bad)?;
    let crashes: u32 = crashes.parse().map_err(|_| bad())?;
    if crashes == 0 {
        return Err(bad());
    }
    Ok(GiveUp {
        crashes,
        window: parse_duration(window)?,
    })
}

/// Every option of `entry` as `key=value` words, defaults included, the
/// way the file would say it.
pub fn describe(entry: &Entry) -> Vec<String> {
    let restart = &entry.restart;
    let mut words = vec![
        format!("success={}", describe_success(entry.success)),
        format!("stop-timeout={}", duration(entry.stop_timeout)),
        format!("restart-delay={}", duration(restart.restart_delay)),
        match restart.backoff {
            Some(b) => format!("backoff={}..{}", duration(b.min), duration(b.max)),
            None => "backoff=none".to_owned(),
        },
        format!("stable-after={}", duration(restart.stable_after)),
        match restart.give_up {
            Some(g) => format!("give-up={}/{}", g.crashes, duration(g.window)),
            None => "give-up=never".to_owned(),
        },
        format!("hook-timeout={}", duration(entry.hook_timeout)),
    ];
    for (key, command) in [("on-crash", &entry.on_crash), ("recover", &entry.recover)] {
        if let Some(command) = command {
            words.push(format!("{key}={}", quote(command)));
        }
    }
    words
}

fn describe_success(set: SuccessSet) -> String {
    let codes = (0..=255u8)
        .filter(|&c| set.is_clean(status::ExitStatus::Exited(c)))
        .map(|c| c.to_string());
    let signals = (1..64)
        .filter(|&signal| {
            set.is_clean(status::ExitStatus::Signaled {
                signal,
                core_dumped: false,
            })
        })
        .filter_map(status::signal_name)
        .map(str::to_owned);
    codes.chain(signals).collect::<Vec<_>>().join(",")
}

/// The shortest exact spelling: `500ms`, `5s`, `2m`, `1h`, `1.5s`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if Duration::from_millis(ms as u64) != d {
        return format!("{}s", d.as_secs_f64());
    }
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

fn quote(text: &str) -> String {
    if text.contains([' ', '\t', '"', '#']) || text.is_empty() {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::parse, supervisor::RestartPolicy};

    fn entries(text: &str) -> Vec<Entry> {
        parse(text, Path::new("armourd.conf")).unwrap().entries
    }

    fn rejects(text: &str, expected: &str) {
        let error = parse(text, Path::new("armourd.conf")).unwrap_err();
        assert_eq!(error.to_string(), format!("armourd.conf:{expected}"));
    }

    #[test]
    fn policy_options_have_the_documented_defaults() {
        let entry = &entries("/usr/sbin/food")[0];
        assert_eq!(entry.restart, RestartPolicy::default());
        assert_eq!(entry.hook_timeout, Duration::from_secs(30));
        assert_eq!(
            (entry.on_crash.as_deref(), entry.recover.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn policy_options_are_read() {
        let entry = &entries(
            r#"/usr/sbin/food restart-delay=1s backoff=200ms..1m stable-after=30s give-up=5/60s on-crash="logger food crashed" recover="/etc/init.d/food restart" hook-timeout=5s"#,
        )[0];
        assert_eq!(entry.restart.restart_delay, Duration::from_secs(1));
        assert_eq!(
            entry.restart.backoff,
            Some(Backoff {
                min: Duration::from_millis(200),
                max: Duration::from_secs(60)
            })
        );
        assert_eq!(entry.restart.stable_after, Duration::from_secs(30));
        assert_eq!(
            entry.restart.give_up,
            Some(GiveUp {
                crashes: 5,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(entry.on_crash.as_deref(), Some("logger food crashed"));
        assert_eq!(entry.recover.as_deref(), Some("/etc/init.d/food restart"));
        assert_eq!(entry.hook_timeout, Duration::from_secs(5));
    }

    #[test]
    fn backoff_none_turns_it_off() {
        assert_eq!(entries("/x backoff=none")[0].restart.backoff, None);
    }

    #[test]
    fn defaults_line_applies_to_later_entries_and_own_options_win() {
        let all = entries(
            "/a\ndefaults backoff=1s..1m give-up=10/5m\n/b\n/c give-up=2/10s\ndefaults stable-after=1m\n/d",
        );
        assert_eq!(all[0].restart, RestartPolicy::default());
        let one_minute = Duration::from_secs(60);
        assert_eq!(all[1].restart.backoff.unwrap().max, one_minute);
        assert_eq!(all[1].restart.give_up.unwrap().crashes, 10);
        assert_eq!(all[2].restart.give_up.unwrap().crashes, 2);
        assert_eq!(all[2].restart.backoff.unwrap().min, Duration::from_secs(1));
        assert_eq!(all[3].restart.stable_after, one_minute);
        assert_eq!(
            all[3].restart.give_up.unwrap().crashes,
            10,
            "defaults add up"
        );
        assert_eq!(all[3].line, 6);
    }

    #[test]
    fn bad_policy_values_name_line_and_column() {
        rejects(
            "/x backoff=1s",
            "1:12: bad backoff '1s' (expected MIN..MAX like 100ms..30s, or none)",
        );
        rejects(
            "/x backoff=2s..1s",
            "1:12: backoff '2s..1s' starts above its maximum (expected MIN..MAX with MIN <= MAX)",
        );
        rejects(
            "/x give-up=0/5s",
            "1:12: bad give-up '0/5s' (expected CRASHES/WINDOW like 5/60s, with CRASHES at least 1)",
        );
        rejects(
            "/x\ndefaults stable-after=10",
            "2:23: duration '10' has no unit (add one, like 10s or 10ms)",
        );
        rejects(
            "/x on-crash=",
            "1:13: empty value for 'on-crash' (expected a shell command, quoted when it has blanks)",
        );
        rejects(
            "defaults /x",
            "1:10: expected an option like success=0,3, found '/x' (options are key=value)",
        );
    }

    #[test]
    fn describe_writes_every_option() {
        let entry = &entries(r#"/x give-up=3/1m on-crash="echo hi""#)[0];
        assert_eq!(
            describe(entry).join(" "),
            "success=0,HUP,INT,PIPE,TERM stop-timeout=5s restart-delay=0s backoff=100ms..30s \
             stable-after=10s give-up=3/1m hook-timeout=30s on-crash=\"echo hi\""
        );
    }
}
