//! The guest's initramfs: an uncompressed newc cpio archive (what the
//! kernel unpacks into its root tmpfs) written with the `cpio` crate.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

enum Content {
    Dir,
    /// A file of the host, copied.
    Host(PathBuf),
    Data(Vec<u8>),
}

/// The archive's entries, each parent folder added on the way.
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<(String, u32, Content)>,
    dirs: BTreeSet<String>,
}

impl Initramfs {
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entries.push((prefix.clone(), 0o755, Content::Dir));
            }
        }
    }

    fn relative(path: &str) -> String {
        path.trim_start_matches('/').to_owned()
    }

    /// An empty folder (mount points).
    pub fn dir(&mut self, path: &str) {
        let path = Self::relative(path);
        self.parents(&path);
        if self.dirs.insert(path.clone()) {
            self.entries.push((path, 0o755, Content::Dir));
        }
    }

    /// The host file `source` as `path`, with `mode`.
    pub fn copy(&mut self, path: &str, source: &Path, mode: u32) {
        let path = Self::relative(path);
        self.parents(&path);
        self.entries
            .push((path, mode, Content::Host(source.to_path_buf())));
    }

    /// A file with the given contents.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        let path = Self::relative(path);
        self.parents(&path);
        self.entries.push((path, mode, Content::Data(data.into())));
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let file =
            File::create(out).with_context(|| format!("could not create {}", out.display()))?;
        let mut out_w = BufWriter::new(file);
        for (ino, (path, mode, content)) in self.entries.iter().enumerate() {
            let builder = cpio::newc::Builder::new(path)
                .ino(ino as u32 + 1)
                .uid(0)
                .gid(0)
                .nlink(1);
            match content {
                Content::Dir => {
                    let writer = builder.mode(0o040000 | mode).nlink(2).write(&mut out_w, 0);
                    writer.finish()?;
                }
                Content::Host(source) => {
                    let data = fs::read(source)
                        .with_context(|| format!("could not read {}", source.display()))?;
                    let mut writer = builder
                        .mode(0o100000 | mode)
                        .write(&mut out_w, u32::try_from(data.len())?);
                    writer.write_all(&data)?;
                    writer.finish()?;
                }
                Content::Data(data) => {
                    let mut writer = builder
                        .mode(0o100000 | mode)
                        .write(&mut out_w, u32::try_from(data.len())?);
                    writer.write_all(data)?;
                    writer.finish()?;
                }
            }
        }
        cpio::newc::trailer(&mut out_w)?;
        out_w
            .flush()
            .with_context(|| format!("could not write {}", out.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_parents_before_their_files_and_reads_back() {
        let mut initramfs = Initramfs::default();
        initramfs.file("/a/b/init", "#!/bin/sh\n", 0o755);
        initramfs.dir("/proc");
        let out = std::env::temp_dir().join(format!("armourd-initramfs-{}", std::process::id()));
        initramfs.write(&out).unwrap();
        let mut reader = File::open(&out).unwrap();
        let mut names = Vec::new();
        loop {
            let entry = cpio::NewcReader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            names.push((entry.entry().name().to_owned(), entry.entry().mode()));
            reader = entry.finish().unwrap();
        }
        fs::remove_file(&out).unwrap();
        assert_eq!(
            names,
            [
                ("a".to_owned(), 0o040755),
                ("a/b".to_owned(), 0o040755),
                ("a/b/init".to_owned(), 0o100755),
                ("proc".to_owned(), 0o040755),
            ]
        );
    }
}
