//! The bus comes back: when the bus daemon restarts, armourd connects
//! again, owns both its names again and goes on emitting its signals;
//! restarts of watched processes never wait for the bus.

use armourd_tests::{
    backend_tests, bus::Scene, process, wait_until, Backend, Value, EVENT_TIMEOUT,
};

backend_tests!(armourd_serves_again_on_a_restarted_bus);

const NAMES: [&str; 2] = ["com.github.Armourd", "com.github.Armourd.Root"];

fn armourd_serves_again_on_a_restarted_bus(backend: Backend) {
    let Scene {
        sb,
        mut bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start(backend, true);
    let pid = sb.spawn(&mut sb.command(&svc, &report));
    report.wait_starts(1);
    daemon.wait_watching(pid);
    for name in NAMES {
        assert!(bus.has_owner(name), "{name} is served at first");
    }

    // While there is no bus, a crash is restarted all the same.
    bus.restart(|| {
        assert!(process::kill(pid, libc::SIGSEGV));
        report.wait_starts(2);
    });
    let first = report.starts()[1].clone();
    for name in NAMES {
        assert!(
            wait_until(EVENT_TIMEOUT, || bus.has_owner(name)),
            "{name} has no owner on the new bus:\n{}",
            daemon.log()
        );
    }

    let monitor = bus.monitor();
    assert!(process::kill(first.pid, libc::SIGSEGV));
    let second = report.wait_starts(3).remove(2);
    let first_is = |pid: i32| move |body: &[Value]| body.first() == Some(&Value::Int32(pid));
    let exited = monitor.wait_signal("ProcessExited", first_is(first.pid));
    assert_eq!(exited.last(), Some(&Value::Bool(true)), "will_restart");
    let restarted = monitor.wait_signal("ProcessRestarted", first_is(first.pid));
    assert_eq!(restarted[1], Value::Int32(second.pid));
    assert_eq!(restarted[3], Value::Uint32(2), "the second restart");
    daemon.assert_running();
}
