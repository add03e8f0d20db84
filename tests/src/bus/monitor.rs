//! `dbus-monitor` on a private bus, its output read back into armourd's
//! signals.

use super::{value, Background, Value, ARMOURD, OBJECT_PATH};
use crate::{wait_for, EVENT_TIMEOUT};

/// `dbus-monitor` on a private bus, reading armourd's signals.
pub struct Monitor(pub(super) Background);

impl Monitor {
    /// The bodies of armourd's signals named `member`, oldest first.
    pub fn signals(&self, member: &str) -> Vec<Vec<Value>> {
        let text = self.0.stdout();
        messages(&text)
            .filter(|(header, _)| {
                header.starts_with("signal ")
                    && header.contains(&format!("path={OBJECT_PATH};"))
                    && header.contains(&format!("interface={ARMOURD};"))
                    && header.ends_with(&format!("member={member}"))
            })
            // A body that does not parse is still being written.
            .filter_map(|(_, body)| value::parse(body).ok())
            .collect()
    }

    /// Waits for armourd's signal `member` whose body `pick` accepts;
    /// panics after [`EVENT_TIMEOUT`] with everything monitored.
    pub fn wait_signal(&self, member: &str, pick: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_for(EVENT_TIMEOUT, || {
            self.signals(member).into_iter().find(|body| pick(body))
        })
        .unwrap_or_else(|| {
            panic!(
                "no matching {member} signal within {EVENT_TIMEOUT:?}; monitored:\n{}",
                self.0.stdout()
            )
        })
    }
}

/// The messages dbus-monitor printed: each a header line and its
/// indented body. The last one may still be incomplete: it is left out.
fn messages(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    for line in complete.split_inclusive('\n') {
        if !line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            starts.push(at);
        }
        at += line.len();
    }
    let ends: Vec<usize> = starts.iter().skip(1).copied().chain([at]).collect();
    starts.into_iter().zip(ends).map(move |(start, end)| {
        let message = &complete[start..end];
        let (header, body) = message.split_once('\n').unwrap_or((message, ""));
        (header.trim_end(), body)
    })
}

#[cfg(test)]
mod tests {
    use super::messages;

    #[test]
    fn monitor_output_splits_into_messages() {
        let text = "signal time=1 sender=:1.3 -> destination=(null destination) serial=18 \
                    path=/com/github/armourd; interface=com.github.Armourd; member=ProcessExited\n   \
                    int32 7\n   boolean true\nmethod call time=2 sender=:1.4 -> \
                    destination=:1.3 serial=2 path=/; interface=x; member=Ping\nsignal time=3 \
                    sender=:1.3 -> destination=(null destination) serial=19 path=/com/github/armourd; \
                    interface=com.github.Armourd; member=ProcessRestarted\n   int32 7\n   int32";
        let found: Vec<(&str, &str)> = messages(text).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].0.ends_with("member=ProcessExited"));
        assert_eq!(found[0].1, "   int32 7\n   boolean true\n");
        assert!(found[1].0.ends_with("member=Ping"));
        assert_eq!(found[1].1, "");
        assert_eq!(
            found[2].1, "   int32 7\n",
            "the line being written is left out"
        );
    }
}
