//! `cargo xtask install` and the files it lays out: binaries, service
//! files for systemd, sysvinit and OpenRC, the D-Bus policy, the example
//! configuration, man pages and shell completions. Man pages and
//! completions are generated here from the clap definitions the binaries
//! use, so the daemon carries no generator.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::{build_cmd, cmd};

// The command line names its backends with this file of armourd's.
#[path = "../../armourd/src/backend/kind.rs"]
#[allow(dead_code, reason = "only its values are used, by the command line")]
mod backend;

#[path = "../../armourd/src/cli.rs"]
mod daemon_cli;

#[path = "../../armourd/src/ctl_cli.rs"]
mod ctl_cli;

#[derive(clap::Args)]
pub struct InstallOptions {
    /// Stage the files under this folder instead of / (for packaging)
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Installation prefix of binaries and shared files
    #[arg(long, value_name = "PREFIX", default_value = "/usr")]
    pub prefix: PathBuf,
    /// Put the OpenRC script in /etc/init.d instead of the sysvinit one
    #[arg(long)]
    pub openrc: bool,
}

/// One file to lay out: where it goes (absolute, before the destdir),
/// what it holds, its mode.
pub struct Item {
    pub to: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// Builds, then installs.
pub fn install(options: &InstallOptions) -> Result<()> {
    let built = build_cmd::build(&build_cmd::BuildOptions {
        debug: false,
        target: None,
    })?;
    let root = options
        .destdir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    ensure!(
        options.prefix.is_absolute(),
        "--prefix {} is not an absolute path (like /usr or /usr/local)",
        options.prefix.display()
    );
    stage(&built.daemon, &root, &options.prefix, options.openrc)
}

/// Lays out every file of an installation under `prefix` below `root`;
/// an existing `/etc/armourd.conf` is kept.
pub fn stage(daemon: &Path, root: &Path, prefix: &Path, openrc: bool) -> Result<()> {
    let items = items(daemon, prefix, openrc)?;
    for item in &items {
        let target = root.join(item.to.strip_prefix("/").unwrap_or(&item.to));
        if item.to.ends_with("etc/armourd.conf") && target.exists() {
            println!(
                "install: keeping {} (the example is in the docs folder)",
                target.display()
            );
            continue;
        }
        write(&target, &item.contents, item.mode)?;
        println!("install: {}", target.display());
    }
    Ok(())
}

/// Every file of an installation under `prefix`; `daemon` is the built
/// armourd (armourctl is beside it).
pub fn items(daemon: &Path, prefix: &Path, openrc: bool) -> Result<Vec<Item>> {
    let root = cmd::workspace_root();
    let dist = root.join("dist");
    let read =
        |path: PathBuf| fs::read(&path).with_context(|| format!("cannot read {}", path.display()));
    // Configuration and init scripts live in /etc for the /usr prefix, else
    // under the prefix.
    let etc = if prefix == Path::new("/usr") {
        PathBuf::from("/etc")
    } else {
        prefix.join("etc")
    };
    let sbin = prefix.join("sbin/armourd");
    // Service files name the daemon where it is installed.
    let service = |path: &str| -> Result<Vec<u8>> {
        let text = String::from_utf8(read(dist.join(path))?)?;
        Ok(text
            .replace("/usr/sbin/armourd", &sbin.display().to_string())
            .into_bytes())
    };
    let share = prefix.join("share");
    let (init, other) = if openrc {
        ("openrc/armourd", "sysvinit/armourd")
    } else {
        ("sysvinit/armourd", "openrc/armourd")
    };
    let mut items = vec![
        Item {
            to: sbin.clone(),
            contents: read(daemon.to_path_buf())?,
            mode: 0o755,
        },
        Item {
            to: prefix.join("bin/armourctl"),
            contents: read(daemon.with_file_name("armourctl"))?,
            mode: 0o755,
        },
        Item {
            to: prefix.join("lib/systemd/system/armourd.service"),
            contents: service("systemd/armourd.service")?,
            mode: 0o644,
        },
        Item {
            to: etc.join("init.d/armourd"),
            contents: service(init)?,
            mode: 0o755,
        },
        Item {
            to: share.join("armourd").join(other),
            contents: service(other)?,
            mode: 0o755,
        },
        Item {
            to: share.join("dbus-1/system.d/com.github.Armourd.conf"),
            contents: read(root.join("dbus/com.github.Armourd.conf"))?,
            mode: 0o644,
        },
        Item {
            to: etc.join("armourd.conf"),
            contents: read(dist.join("armourd.conf"))?,
            mode: 0o644,
        },
        Item {
            to: share.join("doc/armourd/examples/armourd.conf"),
            contents: read(dist.join("armourd.conf"))?,
            mode: 0o644,
        },
        Item {
            to: share.join("man/man5/armourd.conf.5"),
            contents: read(dist.join("man/armourd.conf.5"))?,
            mode: 0o644,
        },
    ];
    items.extend(generated(&share)?);
    Ok(items)
}

/// Man pages and completions, from the clap definitions.
pub fn generated(share: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let commands = [
        (daemon_cli::Args::command(), "8", "man8"),
        (ctl_cli::Args::command(), "1", "man1"),
    ];
    for (command, section, folder) in commands {
        let name = command.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .section(section)
            .render(&mut page)
            .with_context(|| format!("cannot write the man page of {name}"))?;
        // Sections clap knows nothing of: signals, environment, files.
        let tail = cmd::workspace_root().join(format!("dist/man/{name}.{section}.tail"));
        if tail.exists() {
            page.extend(
                fs::read(&tail).with_context(|| format!("cannot read {}", tail.display()))?,
            );
        }
        items.push(Item {
            to: share
                .join("man")
                .join(folder)
                .join(format!("{name}.{section}")),
            contents: page,
            mode: 0o644,
        });
        for (shell, to) in [
            (Shell::Bash, format!("bash-completion/completions/{name}")),
            (Shell::Zsh, format!("zsh/vendor-completions/_{name}")),
            (
                Shell::Fish,
                format!("fish/vendor_completions.d/{name}.fish"),
            ),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
            items.push(Item {
                to: share.join(to),
                contents: script,
                mode: 0o644,
            });
        }
    }
    Ok(items)
}

fn write(target: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if let Some(folder) = target.parent() {
        fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    fs::write(target, contents).with_context(|| format!("cannot write {}", target.display()))?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_consistent() {
        daemon_cli::Args::command().debug_assert();
        ctl_cli::Args::command().debug_assert();
    }

    #[test]
    fn man_pages_and_completions_name_every_option() {
        let items = generated(Path::new("/usr/share")).unwrap();
        let page = items
            .iter()
            .find(|i| i.to.ends_with("man8/armourd.8"))
            .expect("armourd(8)");
        let text = String::from_utf8_lossy(&page.contents);
        for option in ["watchdog", "pidfile", "daemon", "log"] {
            assert!(text.contains(option), "armourd.8 lacks --{option}");
        }
        assert!(text.contains("process watchdog"), "{text}");
        assert!(
            text.contains(".SH FILES"),
            "the hand-written sections follow"
        );
        let bash = items
            .iter()
            .find(|i| i.to.ends_with("bash-completion/completions/armourctl"))
            .expect("armourctl bash completion");
        assert!(String::from_utf8_lossy(&bash.contents).contains("unwatch"));
    }

    /// A temporary folder with stand-in binaries; removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("bin")).unwrap();
            fs::write(dir.join("bin/armourd"), "daemon").unwrap();
            fs::write(dir.join("bin/armourctl"), "client").unwrap();
            Self(dir)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn install_lays_out_every_file_under_destdir() {
        let temp = Temp::new("usr");
        let root = temp.0.join("root");
        stage(&temp.0.join("bin/armourd"), &root, Path::new("/usr"), false).unwrap();
        let expected = [
            ("usr/sbin/armourd", 0o755),
            ("usr/bin/armourctl", 0o755),
            ("usr/lib/systemd/system/armourd.service", 0o644),
            ("etc/init.d/armourd", 0o755),
            ("usr/share/armourd/openrc/armourd", 0o755),
            ("usr/share/dbus-1/system.d/com.github.Armourd.conf", 0o644),
            ("etc/armourd.conf", 0o644),
            ("usr/share/doc/armourd/examples/armourd.conf", 0o644),
            ("usr/share/man/man8/armourd.8", 0o644),
            ("usr/share/man/man5/armourd.conf.5", 0o644),
            ("usr/share/man/man1/armourctl.1", 0o644),
            ("usr/share/bash-completion/completions/armourd", 0o644),
            ("usr/share/bash-completion/completions/armourctl", 0o644),
            ("usr/share/zsh/vendor-completions/_armourd", 0o644),
            ("usr/share/zsh/vendor-completions/_armourctl", 0o644),
            ("usr/share/fish/vendor_completions.d/armourd.fish", 0o644),
            ("usr/share/fish/vendor_completions.d/armourctl.fish", 0o644),
        ];
        for (path, mode) in expected {
            let meta = fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
        }
        let sysvinit = fs::read_to_string(root.join("etc/init.d/armourd")).unwrap();
        assert!(sysvinit.contains("### BEGIN INIT INFO"));
        assert_eq!(fs::read(root.join("usr/sbin/armourd")).unwrap(), b"daemon");
    }

    #[test]
    fn another_prefix_is_named_in_the_service_files_and_a_config_is_kept() {
        let temp = Temp::new("local");
        let root = temp.0.join("root");
        fs::create_dir_all(root.join("opt/ad/etc")).unwrap();
        fs::write(root.join("opt/ad/etc/armourd.conf"), "/usr/sbin/mine\n").unwrap();
        stage(
            &temp.0.join("bin/armourd"),
            &root,
            Path::new("/opt/ad"),
            true,
        )
        .unwrap();
        let unit =
            fs::read_to_string(root.join("opt/ad/lib/systemd/system/armourd.service")).unwrap();
        assert!(unit.contains("ExecStart=/opt/ad/sbin/armourd"), "{unit}");
        let init = fs::read_to_string(root.join("opt/ad/etc/init.d/armourd")).unwrap();
        assert!(
            init.starts_with("#!/sbin/openrc-run"),
            "--openrc puts OpenRC's in init.d"
        );
        assert_eq!(
            fs::read_to_string(root.join("opt/ad/etc/armourd.conf")).unwrap(),
            "/usr/sbin/mine\n",
            "an existing configuration is never overwritten"
        );
    }
}
