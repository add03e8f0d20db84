//! The feeding, timeout and magic close against a stand-in device: a file
//! that records what was done to it, read back by the tests.

use std::{fs, path::Path, time::Duration};

use super::{stand_in::StandIn, Watchdog, WatchdogError};

#[test]
fn the_timeout_the_hardware_took_sets_the_feeding_period() {
    let (recording, device) = StandIn::new("timeout");
    let watchdog = Watchdog::start(Box::new(device), Path::new("/dev/stand-in"), Some(25)).unwrap();
    assert_eq!(watchdog.timeout(), Duration::from_secs(30));
    assert_eq!(watchdog.period(), Duration::from_secs(10));
    assert_eq!(recording.text(), "settimeout 25\nkeepalive\n");
}

#[test]
fn without_a_timeout_the_hardwares_own_is_kept() {
    let (recording, device) = StandIn::new("default");
    let watchdog = Watchdog::start(Box::new(device), Path::new("/dev/stand-in"), None).unwrap();
    assert_eq!(watchdog.timeout(), Duration::from_secs(60));
    assert_eq!(recording.text(), "keepalive\n");
}

#[test]
fn each_feed_is_a_keepalive_and_a_clean_stop_writes_the_magic_v() {
    let (recording, device) = StandIn::new("feed");
    let mut watchdog = Watchdog::start(Box::new(device), Path::new("/dev/stand-in"), None).unwrap();
    watchdog.feed();
    watchdog.feed();
    watchdog.close();
    assert_eq!(recording.text(), "keepalive\nkeepalive\nkeepalive\nV");
}

#[test]
fn a_refused_timeout_is_an_error_and_leaves_the_device_disarmed() {
    let (recording, mut device) = StandIn::new("refused");
    device.refuse_timeout = true;
    let err = Watchdog::start(Box::new(device), Path::new("/dev/stand-in"), Some(5)).unwrap_err();
    assert!(matches!(err, WatchdogError::Ioctl { .. }), "{err}");
    assert!(err.to_string().contains("WDIOC_SETTIMEOUT"), "{err}");
    assert_eq!(recording.text(), "V");
}

#[test]
fn a_regular_file_is_not_a_watchdog() {
    let (recording, _device) = StandIn::new("plain");
    let err = Watchdog::open(recording.path(), None).unwrap_err();
    assert!(matches!(err, WatchdogError::NotAWatchdog { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a watchdog device"),
        "{err}"
    );
}

#[test]
fn a_fifo_is_not_a_watchdog_and_opening_it_does_not_block() {
    let path = std::env::temp_dir().join(format!("armourd-wd-fifo-{}", std::process::id()));
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = Watchdog::open(&path, None).unwrap_err();
    let _ = fs::remove_file(&path);
    assert!(matches!(err, WatchdogError::NotAWatchdog { .. }), "{err}");
}

#[test]
fn a_character_device_that_is_no_watchdog_is_refused() {
    let err = Watchdog::open(Path::new("/dev/null"), None).unwrap_err();
    assert!(matches!(err, WatchdogError::NotAWatchdog { .. }), "{err}");
}

#[test]
fn a_missing_device_says_so() {
    let err = Watchdog::open(Path::new("/dev/no-such-watchdog"), None).unwrap_err();
    assert!(matches!(err, WatchdogError::Open { .. }), "{err}");
}
