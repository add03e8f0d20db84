//! Reloading the configuration (SIGHUP, D-Bus `Reload`) and resetting
//! instances that gave up (D-Bus `Reset`).
//!
//! A reload reads the file with [`config_file::read`], as start-up does. A file
//! with an error changes nothing. Otherwise entries are matched to the old
//! ones by the path or glob they name: the instances of a kept entry keep
//! their state and counters under the entry's new options, those of a
//! removed entry are let go (their processes keep running), and running
//! processes of added entries are adopted.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Instant};

use super::Daemon;
use crate::{
    config::{self, Config, ConfigError},
    config_file,
    logging::error_chain,
    supervisor::{Policy, Selector},
};

/// The supervisor's policy for each entry of `config`.
pub fn policies(config: &Config) -> Vec<Policy> {
    config
        .entries
        .iter()
        .map(|e| Policy {
            success: e.success,
            stop_timeout: e.stop_timeout,
            restart: e.restart,
            on_crash: e.on_crash.as_deref().map(Arc::from),
            recover: e.recover.as_deref().map(Arc::from),
            hook_timeout: e.hook_timeout,
            name: Arc::from(e.pattern.to_string()),
        })
        .collect()
}

/// For each entry of `old`, the index of the entry of `new` that names the
/// same path or glob (the first one not taken yet), or `None`.
fn renumber(old: &Config, new: &Config) -> Vec<Option<usize>> {
    let mut free: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, entry) in new.entries.iter().enumerate().rev() {
        free.entry(entry.pattern.to_string())
            .or_default()
            .push(index);
    }
    old.entries
        .iter()
        .map(|entry| free.get_mut(&entry.pattern.to_string())?.pop())
        .collect()
}

impl Daemon {
    /// Reads the configuration file again and applies it; its error
    /// (logged) when it is rejected, and then nothing changes.
    pub(super) fn reload(&mut self) -> Result<(), ConfigError> {
        self.upkeep.reloading();
        let result = self.reload_file();
        self.upkeep.reloaded(&self.status_line());
        result
    }

    fn reload_file(&mut self) -> Result<(), ConfigError> {
        let newer = match config_file::read(self.config_path.as_deref()) {
            Ok(Some(config)) => config,
            Ok(None) => {
                log::info!(
                    "no configuration at {}: no entries (processes watched on request stay)",
                    config::DEFAULT_PATH
                );
                Config::default()
            }
            Err(err) => {
                log::error!(
                    "reload rejected, the configuration in force stays: {}",
                    error_chain(&err)
                );
                return Err(err);
            }
        };
        let renumbered = renumber(&self.config, &newer);
        let kept = renumbered.iter().flatten().count();
        let (added, removed) = (newer.entries.len() - kept, self.config.entries.len() - kept);
        let actions = self
            .supervisor
            .reconfigure(policies(&newer), &renumbered, Instant::now());
        self.apply(actions);
        self.config = newer;
        self.entries_changed = true;
        self.rescan_files();
        // An executable may now belong to another entry than before, or
        // its instance was let go with an entry that another one replaces.
        self.adopt(None);
        log::info!(
            "configuration reloaded: {} entries ({added} added, {removed} removed, {kept} kept), {} watched",
            self.config.entries.len(),
            self.supervisor.watched().len()
        );
        Ok(())
    }

    /// Forgets the crashes of the instances of `target` (a pid, or an
    /// executable's path); how many there were.
    pub(super) fn reset(&mut self, target: &str) -> u32 {
        let selector = match target.parse::<u32>() {
            Ok(pid) => Selector::Pid(pid),
            Err(_) => {
                let path = PathBuf::from(target);
                Selector::Exe(std::fs::canonicalize(&path).unwrap_or(path))
            }
        };
        let (count, actions) = self.supervisor.reset(&selector, Instant::now());
        self.apply(actions);
        log::info!("reset {count} instances of {target} on request");
        count
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        config::parse(text, Path::new("armourd.conf")).unwrap()
    }

    #[test]
    fn entries_are_matched_by_what_they_name() {
        let old = config("/a\n/b\n/c/*\n");
        let new = config("/c/* give-up=3/1m\n/a\n/d\n");
        assert_eq!(renumber(&old, &new), [Some(1), None, Some(0)]);
    }

    #[test]
    fn a_repeated_entry_is_matched_once() {
        let old = config("/a\n/a\n");
        let new = config("/a\n");
        assert_eq!(renumber(&old, &new), [Some(0), None]);
    }
}
