//! Kernel structure offsets read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, Linux 5.4+ with `CONFIG_DEBUG_INFO_BTF`), so
//! that the eBPF programs hard-code nothing about one kernel build.

use std::path::Path;

use armourd_common::Offsets;
use btf_rs::{Backend, Btf, Type};

/// Where the running kernel describes its types.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(thiserror::Error, Debug)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path} (a kernel with CONFIG_DEBUG_INFO_BTF is needed)")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: &'static str },
    #[error("kernel BTF: struct {structure} has no member {member}")]
    NoMember {
        structure: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF: {structure}.{member} is a bit field")]
    BitField {
        structure: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF: {structure}.{member} is at an offset past 4 GiB")]
    TooFar {
        structure: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF is malformed")]
    Malformed(#[source] btf_rs::Error),
}

/// Reads the offsets the eBPF programs need from `path`: from a mapping of
/// the file, read where needed (a few pages), or where the file cannot be
/// mapped (sysfs before Linux 6.16) from a full parse, which takes tens of
/// megabytes for a moment.
pub fn offsets_from(path: &Path) -> Result<Offsets, BtfError> {
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
    offsets(&btf)
}

/// Reads the offsets from the running kernel.
pub fn kernel_offsets() -> Result<Offsets, BtfError> {
    offsets_from(Path::new(VMLINUX))
}

fn offsets(btf: &Btf) -> Result<Offsets, BtfError> {
    let at = |structure, member| member_offset(btf, structure, member);
    Ok(Offsets {
        task_tgid: at("task_struct", "tgid")?,
        task_exit_code: at("task_struct", "exit_code")?,
        task_signal: at("task_struct", "signal")?,
        task_group_leader: at("task_struct", "group_leader")?,
        task_start_boottime: at("task_struct", "start_boottime")?,
        task_mm: at("task_struct", "mm")?,
        task_real_cred: at("task_struct", "real_cred")?,
        task_real_parent: at("task_struct", "real_parent")?,
        cred_uid: at("cred", "uid")?,
        cred_gid: at("cred", "gid")?,
        signal_live: at("signal_struct", "live")?,
        signal_flags: at("signal_struct", "flags")?,
        signal_group_exit_code: at("signal_struct", "group_exit_code")?,
        mm_arg_start: at("mm_struct", "arg_start")?,
        mm_arg_end: at("mm_struct", "arg_end")?,
        mm_env_start: at("mm_struct", "env_start")?,
        mm_env_end: at("mm_struct", "env_end")?,
        binprm_file: at("linux_binprm", "file")?,
        binprm_filename: at("linux_binprm", "filename")?,
        file_inode: at("file", "f_inode")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        sb_dev: at("super_block", "s_dev")?,
    })
}

/// Byte offset of `member` in `struct structure`, looking into anonymous
/// structs and unions the way C does.
fn member_offset(
    btf: &Btf,
    structure: &'static str,
    member: &'static str,
) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|_| BtfError::NoStruct { name: structure })?;
    let found = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(BtfError::NoStruct { name: structure })?;
    let (bits, bitfield) =
        find_member(btf, found, member)?.ok_or(BtfError::NoMember { structure, member })?;
    if bitfield || bits % 8 != 0 {
        return Err(BtfError::BitField { structure, member });
    }
    u32::try_from(bits / 8).map_err(|_| BtfError::TooFar { structure, member })
}

/// Bit offset of `name` in `s` and whether it is a bit field, or `None`.
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Result<Option<(u64, bool)>, BtfError> {
    for m in &s.members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        if member_name == name {
            let bitfield = m.bitfield_size().is_some_and(|size| size != 0);
            return Ok(Some((u64::from(m.bit_offset()), bitfield)));
        }
        if member_name.is_empty() {
            let inner = btf.resolve_chained_type(m).map_err(BtfError::Malformed)?;
            if let Type::Struct(inner) | Type::Union(inner) = inner {
                if let Some((bits, bitfield)) = find_member(btf, &inner, name)? {
                    return Ok(Some((u64::from(m.bit_offset()) + bits, bitfield)));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the machine's own BTF: every kernel armourd supports has it,
    /// and a machine without it must fail this test loudly.
    #[test]
    fn running_kernel_offsets_are_found_and_plausible() {
        let offsets = kernel_offsets().expect("this machine's kernel BTF");
        // Members that come first in their structs on every kernel.
        assert_eq!(offsets.signal_live, 4, "signal_struct.live follows sigcnt");
        assert!(offsets.task_tgid > 0);
        assert_ne!(offsets.task_exit_code, offsets.task_tgid);
        assert_eq!(offsets.mm_arg_end, offsets.mm_arg_start + 8);
        assert_eq!(offsets.mm_env_end, offsets.mm_env_start + 8);
    }

    #[test]
    fn missing_member_is_named() {
        let btf = Btf::from_file(VMLINUX).expect("this machine's kernel BTF");
        let err = member_offset(&btf, "task_struct", "no_such_member").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct task_struct has no member no_such_member"
        );
    }
}
