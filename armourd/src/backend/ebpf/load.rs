//! Loading the eBPF object: the capabilities it needs, the running
//! kernel's offsets handed to it, its programs attached.

use aya::{
    programs::{raw_trace_point::RawTracePointLink, RawTracePoint},
    EbpfLoader,
};
use aya_log::EbpfLogger;

use super::EbpfError;

#[cfg(ebpf_object)]
pub(super) static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/armourd-ebpf.o"
)));
#[cfg(not(ebpf_object))]
pub(super) static OBJECT: Option<&[u8]> = None;

const PROGRAMS: [&str; 3] = [
    "sched_process_exit",
    "sched_process_fork",
    "sched_process_exec",
];

/// Bytes of the ring buffer of the programs' log (aya-log's default is 128
/// KiB; mapped here, it would add that twice to the resident set). Logs
/// are rare and short (some 200 bytes each).
const LOG_BYTES: u32 = 16 * 1024;

/// CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN for both.
pub(super) fn check_capabilities() -> Result<(), EbpfError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return Ok(()); // unknown: let the kernel decide
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(EbpfError::MissingCapability("CAP_BPF"));
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return Err(EbpfError::MissingCapability("CAP_PERFMON"));
    }
    Ok(())
}

/// What armourd keeps of the loaded object.
pub(super) struct Loaded {
    pub(super) links: Vec<RawTracePointLink>,
    pub(super) maps: Vec<(String, aya::maps::Map)>,
    pub(super) log: EbpfLogger<&'static dyn log::Log>,
}

/// Loads `object` with `offsets` and attaches its programs.
pub(super) fn load_object(
    object: &[u8],
    offsets: &armourd_common::Offsets,
) -> Result<Loaded, EbpfError> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let log_bytes = u32::try_from(page).map_or(LOG_BYTES, |page| LOG_BYTES.max(page));
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", offsets, true)
        .override_global("DAEMON_TGID", &std::process::id(), true)
        .map_max_entries("AYA_LOGS", log_bytes)
        .load(object)
        .map_err(EbpfError::Load)?;
    let mut links = Vec::new();
    for program in PROGRAMS {
        let tracepoint: &mut RawTracePoint = ebpf
            .program_mut(program)
            .ok_or(EbpfError::Missing(program))?
            .try_into()
            .map_err(|source| EbpfError::Program { program, source })?;
        let link = tracepoint
            .load()
            .and_then(|()| tracepoint.attach(program))
            .and_then(|id| tracepoint.take_link(id))
            .map_err(|source| EbpfError::Program { program, source })?;
        links.push(link);
    }
    let log = EbpfLogger::init(&mut ebpf).map_err(EbpfError::Log)?;
    // The links hold the programs; the rest of the object goes.
    let maps = ebpf
        .maps_mut()
        .map(|(name, _)| name.to_owned())
        .collect::<Vec<_>>();
    let maps = maps
        .into_iter()
        .filter_map(|name| Some((name.clone(), ebpf.take_map(&name)?)))
        .collect();
    Ok(Loaded { links, maps, log })
}

pub(super) fn take_map(
    maps: &mut Vec<(String, aya::maps::Map)>,
    name: &'static str,
) -> Result<aya::maps::Map, EbpfError> {
    let index = (maps.iter().position(|(n, _)| n == name)).ok_or(EbpfError::Missing(name))?;
    Ok(maps.swap_remove(index).1)
}
