use std::{
    env,
    os::unix::fs::symlink,
    process,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::config;

/// A fresh canonical directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = env::temp_dir().join(format!("armourd-test-{}-{n}", process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(fs::canonicalize(&path).unwrap())
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `content` to `name` (parents created) with `mode`.
    fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Loads a configuration with `lines`, where `@` stands for this dir.
    fn config(&self, lines: &str) -> Config {
        let file = self.0.join("armourd.conf");
        fs::write(&file, lines.replace('@', self.0.to_str().unwrap())).unwrap();
        crate::config_file::load(&file).unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn paths(files: &[WatchedFile]) -> Vec<&Path> {
    files.iter().map(|file| file.path.as_path()).collect()
}

#[test]
fn split_glob_stops_before_the_first_wildcard_component() {
    assert_eq!(
        split_glob("/usr/local/*/bin/x*"),
        ("/usr/local", "*/bin/x*")
    );
    assert_eq!(split_glob("/opt/a?"), ("/opt", "a?"));
    assert_eq!(split_glob("/*"), ("/", "*"));
}

#[test]
fn load_canonicalises_paths_and_glob_prefixes() {
    let dir = TestDir::new();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    symlink(&real, dir.path().join("link")).unwrap();
    let config = dir.config("@/link/food\n@/link/later/x\n@/link/b*\n");
    assert_eq!(config.entries[0].pattern, Pattern::Path(real.join("food")));
    assert_eq!(
        config.entries[1].pattern,
        Pattern::Path(real.join("later/x"))
    );
    assert!(config.entries[2].matches(&real.join("bar")));
    assert!(!config.entries[2].matches(&dir.path().join("link/bar")));
}

#[test]
fn literal_path_names_the_executable_with_its_key() {
    let dir = TestDir::new();
    let food = dir.file("bin/food", "\x7fELF", 0o755);
    let files = expand(&dir.config("@/bin/food\n"));
    assert_eq!(paths(&files), [food.as_path()]);
    assert_eq!(files[0].key, file_key(&food).unwrap());
    assert_eq!(files[0].entry, 0);
    assert_eq!(files[0].interpreter, None);
}

#[test]
fn symlink_to_a_file_is_watched_as_its_target() {
    let dir = TestDir::new();
    let food = dir.file("bin/food", "\x7fELF", 0o755);
    symlink(&food, dir.path().join("alias")).unwrap();
    assert_eq!(paths(&expand(&dir.config("@/alias\n"))), [food.as_path()]);
    // Also when the link appeared after the configuration was loaded.
    let text = format!("{}/alias", dir.path().display());
    let unresolved = config::parse(&text, Path::new("test.conf")).unwrap();
    assert_eq!(paths(&expand(&unresolved)), [food.as_path()]);
}

#[test]
fn glob_does_not_match_a_symlink_out_of_its_directory() {
    let dir = TestDir::new();
    let a = dir.file("bin/a", "\x7fELF", 0o755);
    let outside = dir.file("outside/x", "\x7fELF", 0o755);
    symlink(&outside, dir.path().join("bin/out")).unwrap();
    symlink(&a, dir.path().join("bin/same")).unwrap();
    // bin/same is bin/a again: one file.
    assert_eq!(paths(&expand(&dir.config("@/bin/*\n"))), [a.as_path()]);
}

#[test]
fn glob_matches_canonical_path_of_a_symlinked_prefix() {
    let dir = TestDir::new();
    let a = dir.file("real/a", "\x7fELF", 0o755);
    symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    assert_eq!(paths(&expand(&dir.config("@/link/*\n"))), [a.as_path()]);
}

#[test]
fn script_with_shebang_names_its_interpreter() {
    let dir = TestDir::new();
    dir.file("bin/script", "#!/bin/sh -e\necho hi\n", 0o755);
    let files = expand(&dir.config("@/bin/script\n"));
    assert_eq!(
        files[0].interpreter,
        Some(fs::canonicalize("/bin/sh").unwrap())
    );
}

#[test]
fn non_executable_file_and_directory_are_not_watched() {
    let dir = TestDir::new();
    dir.file("bin/data", "x", 0o644);
    fs::create_dir(dir.path().join("bin/sub")).unwrap();
    assert!(expand(&dir.config("@/bin/*\n@/bin/data\n@/bin/sub\n")).is_empty());
}

#[test]
fn first_entry_wins_for_a_file_named_twice() {
    let dir = TestDir::new();
    let a = dir.file("bin/a", "\x7fELF", 0o755);
    let b = dir.file("bin/b", "\x7fELF", 0o755);
    let files = expand(&dir.config("@/bin/b success=3\n@/bin/*\n"));
    assert_eq!(paths(&files), [b.as_path(), a.as_path()]);
    assert_eq!(files.iter().map(|f| f.entry).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn watch_dirs_cover_missing_parents_and_wildcard_levels() {
    let dir = TestDir::new();
    dir.file("apps/one/bin/x", "\x7fELF", 0o755);
    fs::create_dir_all(dir.path().join("apps/two")).unwrap();
    dir.file("apps/file", "", 0o644);
    let config = dir.config("@/missing/sub/x\n@/apps/one/bin/x\n@/apps/*/bin/*\n");
    let p = |name: &str| dir.path().join(name);
    let expected = [
        p(""),
        p("apps"),
        p("apps/one"),
        p("apps/one/bin"),
        p("apps/two"),
    ];
    assert_eq!(
        watch_dirs(&config),
        expected.map(|p| p.components().collect::<PathBuf>())
    );
}

#[test]
fn a_glob_prefix_is_watched_by_its_name_in_the_folder_above() {
    let dir = TestDir::new();
    fs::create_dir_all(dir.path().join("apps")).unwrap();
    let config = dir.config("@/apps/*/bin/*\n@/gone/*\n@/apps/x\n");
    assert_eq!(
        prefix_parents(&config),
        [(dir.path().to_path_buf(), OsString::from("apps"))],
        "a missing prefix has its nearest folder watched whole instead; a path has none"
    );
}

#[test]
fn recursive_glob_never_follows_a_directory_symlink() {
    let dir = TestDir::new();
    let a = dir.file("bin/a", "\x7fELF", 0o755);
    let b = dir.file("x/y/bin/b", "\x7fELF", 0o755);
    symlink(".", dir.path().join("loop")).unwrap();
    symlink("..", dir.path().join("x/up")).unwrap();
    symlink("/", dir.path().join("root")).unwrap();
    let config = dir.config("@/**/bin/*\n");
    assert_eq!(paths(&expand(&config)), [a.as_path(), b.as_path()]);
    let dirs = watch_dirs(&config);
    let p = |name: &str| dir.path().join(name);
    assert_eq!(dirs, [p(""), p("bin"), p("x"), p("x/y"), p("x/y/bin")]);
}

#[test]
fn symlinked_directory_at_a_wildcard_level_is_not_entered() {
    let dir = TestDir::new();
    let real = dir.file("apps/real/bin/x", "\x7fELF", 0o755);
    dir.file("elsewhere/bin/y", "\x7fELF", 0o755);
    symlink(dir.path().join("elsewhere"), dir.path().join("apps/link")).unwrap();
    symlink(
        dir.path().join("elsewhere/bin"),
        dir.path().join("apps/real/bin2"),
    )
    .unwrap();
    let config = dir.config("@/apps/*/bin/*\n@/apps/*/bin2/*\n");
    assert_eq!(paths(&expand(&config)), [real.as_path()]);
    assert!(!watch_dirs(&config).contains(&dir.path().join("apps/link")));
}

#[test]
fn walk_stops_at_its_depth_limit_and_keeps_what_it_found() {
    let dir = TestDir::new();
    let shallow = dir.file("a/bin/x", "\x7fELF", 0o755);
    dir.file("a/b/c/d/bin/x", "\x7fELF", 0o755);
    let limits = Limits {
        depth: 3,
        visits: 1000,
    };
    let walk = walk::walk(dir.path(), "**/bin/*", limits);
    assert_eq!(walk.files, [shallow]);
    assert_eq!(walk.bounds, [Bound::Depth]);
    assert!(walk.dirs.contains(&dir.path().join("a/b/c")));
    assert!(!walk.dirs.contains(&dir.path().join("a/b/c/d")));
    // Deep enough: no bound.
    let walk = walk::walk(dir.path(), "**/bin/*", Limits { depth: 5, ..limits });
    assert_eq!(walk.files.len(), 2);
    assert!(walk.bounds.is_empty());
}

#[test]
fn walk_stops_after_its_visit_limit() {
    let dir = TestDir::new();
    for n in 0..20 {
        dir.file(&format!("bin/x{n:02}"), "\x7fELF", 0o755);
    }
    let limits = Limits {
        depth: 32,
        visits: 10,
    };
    let walk = walk::walk(dir.path(), "bin/*", limits);
    assert_eq!(walk.bounds, [Bound::Visits]);
    // The literal `bin` is one visit.
    assert_eq!(walk.files.len(), 9);
    let walk = walk::walk(
        dir.path(),
        "bin/*",
        Limits {
            visits: 21,
            ..limits
        },
    );
    assert_eq!((walk.files.len(), walk.bounds), (20, vec![]));
}

#[test]
fn trailing_recursive_wildcard_and_dot_components_match_nothing() {
    let dir = TestDir::new();
    dir.file("bin/a", "\x7fELF", 0o755);
    let limits = Limits::DEFAULT;
    assert!(walk::walk(dir.path(), "**", limits).files.is_empty());
    assert!(walk::walk(dir.path(), "bin/../bin/*", limits)
        .files
        .is_empty());
    assert!(walk::walk(dir.path(), "./bin/*", limits).files.is_empty());
    assert_eq!(walk::walk(dir.path(), "**/**/a", limits).files.len(), 1);
}

#[test]
fn shebang_interpreter_ends_at_a_blank_or_newline() {
    assert_eq!(parse_shebang(b"#!/bin/sh -e\n"), Some("/bin/sh".into()));
    assert_eq!(
        parse_shebang(b"#!  /usr/bin/env python3"),
        Some("/usr/bin/env".into())
    );
    assert_eq!(
        parse_shebang(b"#!\t/bin/bash\nexit 1"),
        Some("/bin/bash".into())
    );
    assert_eq!(parse_shebang(b"#!/bin/sh"), Some("/bin/sh".into()));
}

#[test]
fn no_shebang_means_no_interpreter() {
    assert_eq!(parse_shebang(b"\x7fELF\x02\x01"), None);
    assert_eq!(parse_shebang(b"#! \n/bin/sh"), None);
    assert_eq!(parse_shebang(b"#!"), None);
    assert_eq!(parse_shebang(b" #!/bin/sh"), None);
}

#[test]
fn bounded_read_never_reads_an_endless_stream_to_its_end() {
    assert_eq!(read_bounded(io::repeat(b'x'), 10).unwrap(), None);
    let exact = read_bounded(&b"0123456789"[..], 10).unwrap();
    assert_eq!(exact.as_deref(), Some(&b"0123456789"[..]));
    assert_eq!(read_bounded(&b"01234567890"[..], 10).unwrap(), None);
}
